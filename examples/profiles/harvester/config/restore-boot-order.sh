#!/bin/sh
# Put the bootforge medium back at the front of the UEFI boot order of {{ hostname }}.
#
# UEFI installers register the new OS as Boot#### and make it first in BootOrder. The bootforge
# medium (virtual CD, USB stick or ESP) stays attached for good, and only while it boots first
# does every boot ask the boot service; so after the install we move it back in front. The
# medium's entry is the first whose label names a CD/DVD, USB or "bootforge"; BIOS machines have
# no boot order to fix and this script does nothing there.
[ -d /sys/firmware/efi ] || { echo "restore-boot-order: BIOS machine, nothing to do"; exit 0; }
command -v efibootmgr >/dev/null 2>&1 || { echo "restore-boot-order: efibootmgr missing" >&2; exit 1; }
entry=$(efibootmgr | sed -n 's/^Boot\([0-9A-Fa-f]\{4\}\)[* ] *\(.*\)$/\1 \2/p' \
  | grep -i -E ' .*(bootforge|cd|dvd|usb|virtual media)' | head -n1 | cut -d' ' -f1)
if [ -z "$entry" ]; then
  echo "restore-boot-order: no CD/USB/bootforge entry found; boot order left as it is" >&2
  exit 0
fi
order=$(efibootmgr | sed -n 's/^BootOrder: *//p')
rest=$(echo "$order" | tr ',' '\n' | grep -v -i "^$entry$" | paste -sd, -)
efibootmgr -o "$entry${rest:+,$rest}"
echo "restore-boot-order: medium entry Boot$entry is first again"
