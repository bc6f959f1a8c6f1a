//! `check`, `script`, `build` and `inspect`: the media builder's commands.
