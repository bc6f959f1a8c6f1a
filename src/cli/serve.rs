//! `serve` and `reimage`: the boot service's commands.
