//! The nf_tables expressions rustbridge uses, as plain data, and their
//! netlink encoding (linux/netfilter/nf_tables.h). Only what the ruleset in
//! [`super::ruleset`] needs.

use super::msg::Attrs;

/// The verdict register and the first 128-bit data register.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
/// 32-bit data registers: `REG32_00 + n`; concatenations take one per 4 bytes.
pub const REG32_00: u32 = 8;

pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetaKey {
    Mark = 3,
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CtKey {
    State = 0,
    Direction = 1,
    Status = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    Ct {
        key: CtKey,
        dreg: u32,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Set membership (no dreg), or a map lookup into dreg (REG_VERDICT for a verdict map).
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
    },
    /// `fib daddr type` into dreg (an RTN_* value, host order).
    FibDaddrType {
        dreg: u32,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Verdict {
        code: i32,
        chain: Option<String>,
    },
    /// NAT to the address (and port) in registers; family is NFPROTO_IPV4/6.
    Nat {
        kind: NatKind,
        family: u8,
        addr: u32,
        port: Option<u32>,
    },
    Masquerade,
}

const NLA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::FibDaddrType { .. } => "fib",
            Expr::Immediate { .. } | Expr::Verdict { .. } => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade => "masq",
        }
    }

    /// One NFTA_LIST_ELEM of a rule's NFTA_RULE_EXPRESSIONS.
    pub fn encode(&self, out: &mut Attrs) {
        out.nested(NLA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, self.name());
            e.nested(NFTA_EXPR_DATA, |d| self.encode_data(d));
        });
    }

    fn encode_data(&self, d: &mut Attrs) {
        match self {
            // NFTA_META_DREG 1, KEY 2, SREG 3
            Expr::Meta { key, dreg } => {
                d.put_be32(2, *key as u32);
                d.put_be32(1, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                d.put_be32(2, *key as u32);
                d.put_be32(3, *sreg);
            }
            // NFTA_CT_DREG 1, KEY 2
            Expr::Ct { key, dreg } => {
                d.put_be32(2, *key as u32);
                d.put_be32(1, *dreg);
            }
            // NFTA_PAYLOAD_DREG 1, BASE 2, OFFSET 3, LEN 4
            Expr::Payload { base, offset, len, dreg } => {
                d.put_be32(1, *dreg);
                d.put_be32(2, *base as u32);
                d.put_be32(3, *offset);
                d.put_be32(4, *len);
            }
            // NFTA_CMP_SREG 1, OP 2, DATA 3
            Expr::Cmp { sreg, op, data } => {
                d.put_be32(1, *sreg);
                d.put_be32(2, *op as u32);
                d.nested(3, |v| v.put(NFTA_DATA_VALUE, data));
            }
            // NFTA_BITWISE_SREG 1, DREG 2, LEN 3, MASK 4, XOR 5
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                d.put_be32(1, *sreg);
                d.put_be32(2, *dreg);
                d.put_be32(3, mask.len() as u32);
                d.nested(4, |v| v.put(NFTA_DATA_VALUE, mask));
                d.nested(5, |v| v.put(NFTA_DATA_VALUE, xor));
            }
            // NFTA_LOOKUP_SET 1, SREG 2, DREG 3
            Expr::Lookup { set, sreg, dreg } => {
                d.put_str(1, set);
                d.put_be32(2, *sreg);
                if let Some(dreg) = dreg {
                    d.put_be32(3, *dreg);
                }
            }
            // NFTA_FIB_DREG 1, RESULT 2 (ADDRTYPE 3), FLAGS 3 (F_DADDR 2)
            Expr::FibDaddrType { dreg } => {
                d.put_be32(1, *dreg);
                d.put_be32(2, 3);
                d.put_be32(3, 2);
            }
            // NFTA_IMMEDIATE_DREG 1, DATA 2
            Expr::Immediate { dreg, data } => {
                d.put_be32(1, *dreg);
                d.nested(2, |v| v.put(NFTA_DATA_VALUE, data));
            }
            Expr::Verdict { code, chain } => {
                d.put_be32(1, REG_VERDICT);
                d.nested(2, |v| v.nested(NFTA_DATA_VERDICT, |vd| encode_verdict(vd, *code, chain.as_deref())));
            }
            // NFTA_NAT_TYPE 1, FAMILY 2, REG_ADDR_MIN 3, REG_PROTO_MIN 5
            Expr::Nat { kind, family, addr, port } => {
                d.put_be32(1, *kind as u32);
                d.put_be32(2, u32::from(*family));
                d.put_be32(3, *addr);
                if let Some(port) = port {
                    d.put_be32(5, *port);
                }
            }
            Expr::Masquerade => {}
        }
    }
}

/// NFTA_VERDICT_CODE (and CHAIN for a jump), inside an NFTA_DATA_VERDICT.
pub fn encode_verdict(out: &mut Attrs, code: i32, chain: Option<&str>) {
    out.put_be32(NFTA_VERDICT_CODE, code as u32);
    if let Some(chain) = chain {
        out.put_str(NFTA_VERDICT_CHAIN, chain);
    }
}
