//! Reading what a VM put on the wire: the pcap files QEMU's `filter-dump` writes
//! ([`super::Vm::capture_net`]). Only what the tests ask is decoded: Ethernet II, IPv4, and the
//! UDP ports or TCP payload inside.

use std::net::Ipv4Addr;
use std::path::Path;

/// One IPv4 frame: Ethernet source, IPv4 addresses, transport and what follows its header.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame's Ethernet source address, `aa:bb:cc:dd:ee:ff`.
    pub src_mac: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The IP protocol number: 6 TCP, 17 UDP.
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// The TCP or UDP payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A DHCP (BOOTP) message: UDP from or to port 67 or 68.
    pub fn is_dhcp(&self) -> bool {
        self.protocol == 17 && [67, 68].iter().any(|p| *p == self.src_port || *p == self.dst_port)
    }

    /// One line for a failure message.
    pub fn summary(&self) -> String {
        let proto = match self.protocol {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            p => format!("proto {p}"),
        };
        format!(
            "{} {}:{} -> {}:{} {proto}, {} bytes",
            self.src_mac,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            self.payload.len()
        )
    }
}

/// Every IPv4 frame of a pcap file (little-endian, Ethernet link type, as QEMU writes them);
/// fails the test if the file is missing or not such a file. Other frames (ARP, IPv6) are
/// counted in the second value.
pub fn read_ipv4(path: &Path) -> (Vec<Frame>, usize) {
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("cannot read the capture {}: {e}", path.display()));
    assert!(
        data.len() >= 24 && data[..4] == [0xd4, 0xc3, 0xb2, 0xa1],
        "{} is not a little-endian pcap file",
        path.display()
    );
    let u32_at = |d: &[u8], i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
    assert_eq!(u32_at(&data, 20), 1, "{}: the link type is not Ethernet", path.display());
    let mut frames = Vec::new();
    let mut others = 0;
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(&data, at + 8) as usize;
        at += 16;
        let Some(f) = data.get(at..at + len) else { break };
        at += len;
        match ipv4(f) {
            Some(frame) => frames.push(frame),
            None => others += 1,
        }
    }
    (frames, others)
}

fn ipv4(f: &[u8]) -> Option<Frame> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return None;
    }
    let src_mac = f[6..12].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let protocol = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = ip.get(ihl..total)?;
    let port = |i: usize| l4.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (src_port, dst_port) = (port(0).unwrap_or(0), port(2).unwrap_or(0));
    let payload = match protocol {
        6 => l4.get(usize::from(l4.get(12)? >> 4) * 4..)?.to_vec(),
        17 => l4.get(8..)?.to_vec(),
        _ => Vec::new(),
    };
    Some(Frame { src_mac, src, dst, protocol, src_port, dst_port, payload })
}
