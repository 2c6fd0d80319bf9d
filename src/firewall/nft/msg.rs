//! nfnetlink framing for nf_tables: attributes, messages, one batch per
//! transaction, and a NETLINK_NETFILTER socket that sends a batch and checks
//! the kernel's answer (or reads a dump), each bounded in time.

use std::time::{Duration, Instant};

/// Every kernel request is bounded, as the data plane's netlink requests are.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLA_F_NESTED: u16 = 0x8000;
const HEADER: usize = 16;
const NFGENMSG: usize = 4;
/// Large enough for a full rewrite with tens of thousands of set elements in one batch.
const SOCKET_BUFFER: libc::c_int = 64 << 20;

/// The nf_tables message types rustbridge sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    GetChain = 4,
    DelChain = 5,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    GetSet = 10,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
}

/// Netlink attributes, appended in place (4-byte aligned).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    pub fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    pub fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }

    pub fn put_be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    pub fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        let mut inner = Attrs(std::mem::take(&mut self.0));
        fill(&mut inner);
        self.0 = inner.0;
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

/// One nf_tables request of a batch, with what it does in words for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub kind: Kind,
    pub flags: u16,
    pub family: u8,
    pub attrs: Attrs,
    pub what: String,
}

impl Msg {
    pub fn new(kind: Kind, flags: u16, family: u8, what: String, fill: impl FnOnce(&mut Attrs)) -> Msg {
        let mut attrs = Attrs::default();
        fill(&mut attrs);
        Msg { kind, flags, family, attrs, what }
    }
}

fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = (HEADER + NFGENMSG + attrs.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

fn nft_type(kind: Kind) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | kind as u16
}

/// BATCH_BEGIN, the messages (sequence numbers `first_seq + 1 ..`), BATCH_END.
/// Only the last message asks for an ACK: the kernel reports every failed
/// message anyway, and a batch either commits whole or not at all.
pub fn encode_batch(msgs: &[Msg], first_seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    for (i, m) in msgs.iter().enumerate() {
        let ack = if i + 1 == msgs.len() { NLM_F_ACK } else { 0 };
        let seq = first_seq + 1 + i as u32;
        header(&mut out, nft_type(m.kind), NLM_F_REQUEST | ack | m.flags, seq, m.family, 0, &m.attrs.0);
    }
    let end = first_seq + 1 + msgs.len() as u32;
    header(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, &[]);
    out
}

/// One received nf_tables message: its family and top-level attributes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub family: u8,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Reply {
    pub fn str(&self, kind: u16) -> Option<String> {
        let value = &self.attrs.iter().find(|(k, _)| *k == kind)?.1;
        Some(String::from_utf8_lossy(value.split(|b| *b == 0).next().unwrap_or_default()).into_owned())
    }

    pub fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
    }
}

/// The attributes in `data`, flags stripped from their types.
pub fn parse_attrs(mut data: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, data[4..len].to_vec()));
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    out
}

/// A kernel answer that is not success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub errno: i32,
    pub seq: u32,
    pub message: Option<String>,
}

impl KernelError {
    pub fn describe(&self) -> String {
        let text = std::io::Error::from_raw_os_error(self.errno);
        match &self.message {
            Some(m) if !m.is_empty() => format!("{text} ({m})"),
            _ => text.to_string(),
        }
    }
}

/// One message out of a receive buffer.
enum Incoming {
    Ack { seq: u32 },
    Error(KernelError),
    Data(Reply),
    Done { seq: u32 },
}

fn parse_messages(mut buf: &[u8]) -> Vec<Incoming> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        if len < HEADER || len > buf.len() {
            break;
        }
        let body = &buf[HEADER..len];
        match kind {
            NLMSG_ERROR if body.len() >= 4 + HEADER => {
                let errno = -i32::from_ne_bytes(body[0..4].try_into().unwrap());
                let orig_seq = u32::from_ne_bytes(body[12..16].try_into().unwrap());
                if errno == 0 {
                    out.push(Incoming::Ack { seq: orig_seq });
                } else {
                    let orig_len = u32::from_ne_bytes(body[4..8].try_into().unwrap()) as usize;
                    let skip = if flags & NLM_F_CAPPED != 0 { HEADER } else { orig_len.max(HEADER) };
                    let message = (flags & NLM_F_ACK_TLVS != 0)
                        .then(|| body.get(4 + skip..).map(parse_attrs))
                        .flatten()
                        .and_then(|tlvs| {
                            let (_, text) = tlvs.into_iter().find(|(k, _)| *k == NLMSGERR_ATTR_MSG)?;
                            Some(String::from_utf8_lossy(text.split(|b| *b == 0).next()?).into_owned())
                        });
                    out.push(Incoming::Error(KernelError { errno, seq: orig_seq, message }));
                }
            }
            NLMSG_DONE => out.push(Incoming::Done { seq }),
            _ if body.len() >= NFGENMSG => {
                out.push(Incoming::Data(Reply { family: body[0], attrs: parse_attrs(&body[NFGENMSG..]) }))
            }
            _ => {}
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// A NETLINK_NETFILTER socket, blocking, each receive bounded.
pub struct Socket {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Socket {
    pub fn open() -> Result<Socket, String> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if raw < 0 {
            return Err(os_err("netfilter netlink socket"));
        }
        // SAFETY: raw is a fresh, valid descriptor.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let sock = Socket { fd, seq: seq_start() };
        // SAFETY: zeroed sockaddr_nl is a valid "kernel assigns the port id" address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                sock.raw(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(os_err("bind netfilter netlink socket"));
        }
        // Larger buffers need CAP_NET_ADMIN (FORCE) and only matter for big batches: best effort.
        sock.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER);
        sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER);
        sock.set_int(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        sock.set_int(SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let tv = libc::timeval { tv_sec: REQUEST_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        // SAFETY: tv is a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                sock.raw(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(sock)
    }

    fn raw(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
        // SAFETY: value is a valid c_int for the duration of the call.
        unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
    }

    fn send(&self, buf: &[u8]) -> Result<(), String> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (port id 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buf and addr are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.raw(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(os_err(&format!("send {} bytes to nf_tables", buf.len())));
        }
        Ok(())
    }

    fn recv(&self, deadline: Instant, buf: &mut [u8], nonblocking: bool) -> Result<Option<usize>, String> {
        if Instant::now() > deadline {
            return Err(format!("no answer from nf_tables within {}s", REQUEST_TIMEOUT.as_secs()));
        }
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), flags) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) if nonblocking => Ok(None),
                Some(libc::EAGAIN) => Err(format!("no answer from nf_tables within {}s", REQUEST_TIMEOUT.as_secs())),
                Some(libc::EINTR) => Ok(Some(0)),
                _ => Err(format!("receive from nf_tables: {e}")),
            };
        }
        Ok(Some(n as usize))
    }

    /// Sends `msgs` as one transaction and waits for its verdict. On failure,
    /// the error names the first message the kernel refused.
    pub fn transact(&mut self, msgs: &[Msg]) -> Result<(), String> {
        if msgs.is_empty() {
            return Ok(());
        }
        let first = self.seq;
        self.seq = self.seq.wrapping_add(msgs.len() as u32 + 2);
        let last = first + msgs.len() as u32;
        self.send(&encode_batch(msgs, first))?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut buf = vec![0u8; 1 << 16];
        let mut failed: Option<KernelError> = None;
        loop {
            let nonblocking = failed.is_some();
            let Some(n) = self.recv(deadline, &mut buf, nonblocking)? else { break };
            for m in parse_messages(&buf[..n]) {
                match m {
                    Incoming::Error(e) if (first..=last + 1).contains(&e.seq) => {
                        failed.get_or_insert(e);
                    }
                    Incoming::Ack { seq } if seq == last && failed.is_none() => return Ok(()),
                    _ => {}
                }
            }
        }
        let e = failed.expect("loop ends only after an error");
        let what = match e.seq.checked_sub(first + 1).and_then(|i| msgs.get(i as usize)) {
            Some(m) => m.what.clone(),
            None => format!("the transaction of {} messages", msgs.len()),
        };
        Err(format!("{what}: {}", e.describe()))
    }

    /// Every object a GET dump returns; ENOENT (no such table or set) is an empty list.
    pub fn dump(&mut self, msg: &Msg) -> Result<Vec<Reply>, String> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        header(&mut out, nft_type(msg.kind), NLM_F_REQUEST | NLM_F_DUMP, seq, msg.family, 0, &msg.attrs.0);
        self.send(&out)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut buf = vec![0u8; 1 << 16];
        let mut replies = Vec::new();
        loop {
            let Some(n) = self.recv(deadline, &mut buf, false)? else { continue };
            for m in parse_messages(&buf[..n]) {
                match m {
                    Incoming::Data(r) => replies.push(r),
                    Incoming::Done { seq: s } if s == seq => return Ok(replies),
                    Incoming::Error(e) if e.seq == seq && e.errno == libc::ENOENT => return Ok(Vec::new()),
                    Incoming::Error(e) if e.seq == seq => return Err(format!("{}: {}", msg.what, e.describe())),
                    _ => {}
                }
            }
        }
    }
}

/// Sequence numbers start from the clock so that stale answers on a reused port id cannot match.
fn seq_start() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_with_the_flag() {
        let mut a = Attrs::default();
        a.put_str(1, "ab");
        a.nested(2, |n| n.put_be32(1, 7));
        assert_eq!(a.0, [7, 0, 1, 0, b'a', b'b', 0, 0, 12, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 7]);
        assert_eq!(parse_attrs(&a.0), [(1, b"ab\0".to_vec()), (2, vec![8, 0, 1, 0, 0, 0, 0, 7])]);
    }

    #[test]
    fn a_batch_is_framed_with_begin_and_end_and_acks_its_last_message() {
        let m = Msg::new(Kind::NewTable, NLM_F_CREATE, NFPROTO_INET, "add table".into(), |a| a.put_str(1, "t"));
        let bytes = encode_batch(&[m.clone(), m], 100);
        let mut seen = Vec::new();
        let mut buf = &bytes[..];
        while !buf.is_empty() {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            seen.push((kind, flags, seq, buf[16], u16::from_be_bytes([buf[18], buf[19]])));
            buf = &buf[len..];
        }
        assert_eq!(
            seen,
            [(16, 1, 100, 0, 10), (0xa00, 0x401, 101, 1, 0), (0xa00, 0x405, 102, 1, 0), (17, 1, 103, 0, 10)]
        );
    }

    #[test]
    fn errors_carry_the_kernel_message() {
        // nlmsgerr: error -2, capped original header (seq 7), then NLMSGERR_ATTR_MSG.
        let mut body = Vec::new();
        body.extend_from_slice(&(-2i32).to_ne_bytes());
        body.extend_from_slice(&[20, 0, 0, 0, 0, 0xa, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        let mut tlv = Attrs::default();
        tlv.put_str(NLMSGERR_ATTR_MSG, "no such set");
        body.extend_from_slice(&tlv.0);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        msg.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&body);
        match &parse_messages(&msg)[..] {
            [Incoming::Error(e)] => {
                assert_eq!((e.errno, e.seq, e.message.as_deref()), (2, 7, Some("no such set")));
                assert!(e.describe().contains("(no such set)"), "{}", e.describe());
            }
            _ => panic!("expected one error"),
        }
    }
}
