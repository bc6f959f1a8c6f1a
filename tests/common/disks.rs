//! The "local disk" a fallback test expects the machine to end up on.
//!
//! One image serves both firmwares, so a test attaches the same file whatever it boots:
//!
//! * It is a FAT16 "superfloppy" (a file system on the whole disk, no partition table).
//! * **BIOS** boots sector 0, which is the FAT boot sector: its boot-code area (after the BPB,
//!   from offset 0x3E) holds a few bytes of hand-assembled 16-bit code that prints
//!   [`LOCAL_DISK_MARKER`] and stops the VM (see [`bios_boot_code`]). The partition-table area of
//!   the sector stays zero, which UEFI's partition driver reads as "no MBR partitions" and so
//!   mounts the whole disk as FAT.
//! * **UEFI** boots the removable-media path `\EFI\BOOT\BOOTX64.EFI` (`BOOTAA64.EFI` on
//!   arm64), which is the vendored iPXE, whose `\autoexec.ipxe` prints the marker and powers
//!   off. A real installed system is
//!   this shape too (a loader on an ESP). OVMF tries it as soon as the medium's boot option fails.
//!   A `startup.nsh` (marker with ` efi-shell`, then `reset -s`) is written as well. Verified
//!   with OVMF 2022.11 (Debian bookworm): with `bootindex` set, BootOrder is the named devices
//!   then "EFI Internal Shell", so the shell runs only when the disk has no loader, waits 5 s
//!   before running `startup.nsh`, and looks for it only on the `FS0:` mapping, which is not
//!   necessarily this disk once a bootforge ESP is attached too. The loader avoids all of that.
//!   x86 UEFI machines now boot without `bootindex` (OVMF's own order, see
//!   `Vm::firmware_boot_order`): there the disk's "UEFI Misc Device" entry comes after the CD
//!   and USB media and before the NIC and the shell, so the same loader runs.
//!
//! The marker carries the firmware's name so a log shows which path ran.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Printed by the local disk on the serial console (followed by ` bios` or ` efi`).
pub const LOCAL_DISK_MARKER: &str = "BOOTFORGE-LOCAL-DISK";

/// The QEMU exit status the BIOS boot code causes through the `isa-debug-exit` device: QEMU
/// exits with `(value << 1) | 1`, and the code writes 0x21.
pub const BIOS_LOCAL_DISK_EXIT: i32 = (0x21 << 1) | 1;

/// The debug-exit port the BIOS boot code writes to; the VM builder adds the device at this port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

const DISK_SIZE: u64 = 8 * 1024 * 1024;
const SECTOR: u64 = 512;
/// FAT12/16 boot code starts after the BPB, here.
const BOOT_CODE_OFFSET: usize = 0x3e;
/// The (empty) MBR partition table; the boot code must end before it.
const PARTITION_TABLE_OFFSET: usize = 0x1be;

/// Writes the local-disk image into `dir` and returns its path.
pub fn local_disk(dir: &Path) -> PathBuf {
    let path = dir.join("local-disk.img");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the local disk image");
    file.set_len(DISK_SIZE).expect("size the local disk image");
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat16)
            .total_sectors((DISK_SIZE / SECTOR) as u32)
            .volume_label(*b"LOCALDISK  "),
    )
    .expect("format the local disk");
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())
            .expect("open the local disk's FAT");
        let root = fs.root_dir();
        let boot = root.create_dir("EFI").and_then(|d| d.create_dir("BOOT")).expect("mkdir");
        let ipxe = std::fs::read(super::repo_path("vendor/ipxe/ipxe-amd64.efi"))
            .expect("read vendor/ipxe/ipxe-amd64.efi");
        put(&boot, "BOOTX64.EFI", &ipxe);
        let ipxe_arm64 = std::fs::read(super::repo_path("vendor/ipxe/ipxe-arm64.efi"))
            .expect("read vendor/ipxe/ipxe-arm64.efi");
        put(&boot, "BOOTAA64.EFI", &ipxe_arm64);
        put(
            &root,
            "autoexec.ipxe",
            format!("#!ipxe\necho {LOCAL_DISK_MARKER} efi\npoweroff\n").as_bytes(),
        );
        put(
            &root,
            "startup.nsh",
            format!("echo {LOCAL_DISK_MARKER} efi-shell\r\nreset -s\r\n").as_bytes(),
        );
    }
    // Put the BIOS code into the FAT boot sector, keeping the BPB that fatfs wrote.
    let code = bios_boot_code(&format!("{LOCAL_DISK_MARKER} bios\r\n"));
    let mut sector = [0u8; 512];
    sector[BOOT_CODE_OFFSET..BOOT_CODE_OFFSET + code.len()].copy_from_slice(&code);
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut head = [0u8; BOOT_CODE_OFFSET];
    std::io::Read::read_exact(&mut file, &mut head).unwrap();
    sector[..BOOT_CODE_OFFSET].copy_from_slice(&head);
    sector[0..3].copy_from_slice(&[0xeb, (BOOT_CODE_OFFSET - 2) as u8, 0x90]); // jmp short 0x3e; nop
    sector[510] = 0x55;
    sector[511] = 0xaa;
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&sector).expect("write the boot sector");
    file.sync_all().unwrap();
    path
}

fn put<T: fatfs::ReadWriteSeek>(dir: &fatfs::Dir<'_, T>, name: &str, data: &[u8]) {
    let mut f = dir.create_file(name).expect("create a file on the local disk");
    f.truncate().unwrap();
    f.write_all(data).expect("write a file on the local disk");
}

/// 16-bit real-mode code for the boot sector, loaded by the BIOS (or by iPXE's `sanboot`) at
/// 0000:7C00 with the code itself at 0x7C00 + [`BOOT_CODE_OFFSET`], followed by `message`.
///
/// It prints `message` twice: through the BIOS teletype service (what a real loader does, and
/// what shows on a screen), then straight to COM1. The second copy is the one the tests rely on:
/// SeaBIOS's serial mirror of the screen ("sercon") buffers output and only flushes it on later
/// BIOS calls, so the last line before the VM stops may never reach the log. Then it writes to
/// QEMU's `isa-debug-exit` port, which ends QEMU with [`BIOS_LOCAL_DISK_EXIT`]; without that
/// device it just halts, and the harness stops the VM when it sees the marker.
///
/// Only relative jumps and absolute data addresses with DS = 0 are used, so it runs whether the
/// loader jumped to 0000:7C00 or 07C0:0000.
pub fn bios_boot_code(message: &str) -> Vec<u8> {
    assert!(message.is_ascii() && !message.contains('\0'));
    // The program as (machine code, assembly) pairs; `MSG` marks the two bytes that receive the
    // message's address once the code length is known. Jump offsets are relative to the end of
    // the jump instruction and are counted in the comments.
    const MSG: u8 = 0xff;
    let exit_port = DEBUG_EXIT_PORT as u8;
    let program: &[(&[u8], &str)] = &[
        (&[0xfa], "cli"),
        (&[0x31, 0xc0], "xor ax, ax"),
        (&[0x8e, 0xd8], "mov ds, ax"),
        (&[0x8e, 0xd0], "mov ss, ax"),
        (&[0xbc, 0x00, 0x7c], "mov sp, 0x7c00      ; stack grows down below the sector"),
        (&[0xfb], "sti"),
        (&[0xfc], "cld                 ; lodsb counts up"),
        (&[0xbe, MSG, MSG], "mov si, msg"),
        (&[], "screen:"),
        (&[0xac], "lodsb               ; al = [si], si += 1"),
        (&[0x84, 0xc0], "test al, al"),
        (&[0x74, 0x09], "jz serial_init      ; +9: over the next four instructions"),
        (&[0xb4, 0x0e], "mov ah, 0x0e        ; BIOS teletype output"),
        (&[0xbb, 0x07, 0x00], "mov bx, 0x0007      ; page 0, light grey"),
        (&[0xcd, 0x10], "int 0x10"),
        (&[0xeb, 0xf2], "jmp screen          ; -14: back to lodsb"),
        (&[], "serial_init:"),
        (&[0xbe, MSG, MSG], "mov si, msg"),
        (&[0xba, 0xf8, 0x03], "mov dx, 0x3f8       ; COM1 transmit register"),
        (&[], "serial:"),
        (&[0xac], "lodsb"),
        (&[0x84, 0xc0], "test al, al"),
        (&[0x74, 0x03], "jz exit             ; +3: over out and jmp"),
        (&[0xee], "out dx, al"),
        (&[0xeb, 0xf8], "jmp serial          ; -8: back to lodsb"),
        (&[], "exit:"),
        (&[0xb0, 0x21], "mov al, 0x21"),
        (&[0xe6, exit_port], "out 0xf4, al        ; isa-debug-exit: QEMU exits with 0x43"),
        (&[], "halt:"),
        (&[0xfa], "cli"),
        (&[0xf4], "hlt"),
        (&[0xeb, 0xfc], "jmp halt            ; -4: back to cli"),
    ];
    let mut code: Vec<u8> = program.iter().flat_map(|(bytes, _)| bytes.iter().copied()).collect();
    let msg = (0x7c00 + BOOT_CODE_OFFSET + code.len()) as u16;
    // The only 0xff bytes in the program are the placeholders, in pairs.
    let mut i = 0;
    while i < code.len() {
        if code[i] == MSG {
            code[i..i + 2].copy_from_slice(&msg.to_le_bytes());
            i += 2;
        } else {
            i += 1;
        }
    }
    code.extend(message.as_bytes());
    code.push(0);
    assert!(BOOT_CODE_OFFSET + code.len() <= PARTITION_TABLE_OFFSET, "boot code too long");
    code
}
