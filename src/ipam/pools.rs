//! Default pools (`--default-pool CIDR:SIZE`) and picking a free candidate from them.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::IpamError;
use super::net::{first_value, ipnet_text, last_value, require_network, u128_to_addr};
use crate::family::Family;

const DEFAULT_POOL_FIELD: &str = "default pool";

/// A range of candidate pools: `base` cut into networks of prefix length `size`,
/// e.g. base 10.210.0.0/16 size 24 gives 256 candidate /24s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    #[serde(with = "ipnet_text")]
    pub base: IpNet,
    pub size: u8,
}

/// The defaults: 10.210.0.0/16 in /24s and the ULA fdb7:7b00::/40 in /64s.
pub fn default_pools() -> Vec<DefaultPool> {
    ["10.210.0.0/16:24", "fdb7:7b00::/40:64"]
        .into_iter()
        .map(|s| DefaultPool::parse(s).expect("built-in default pool is valid"))
        .collect()
}

impl DefaultPool {
    pub fn new(base: IpNet, size: u8) -> Result<Self, IpamError> {
        let pool = DefaultPool { base, size };
        pool.validate()?;
        Ok(pool)
    }

    /// Parses "CIDR:SIZE", e.g. "10.210.0.0/16:24" or "fd5c::/48:64".
    pub fn parse(s: &str) -> Result<Self, IpamError> {
        let text = s.trim();
        let (cidr, size) = split_cidr_and_size(text)
            .ok_or_else(|| IpamError::invalid(DEFAULT_POOL_FIELD, text, "expected CIDR:SIZE, e.g. 10.210.0.0/16:24"))?;
        let base: IpNet = cidr.parse().map_err(|_| {
            IpamError::invalid(DEFAULT_POOL_FIELD, text, format!("{cidr:?} is not a valid CIDR network"))
        })?;
        let size: u8 = size.parse().map_err(|_| {
            IpamError::invalid(DEFAULT_POOL_FIELD, text, format!("{size:?} is not a valid prefix length"))
        })?;
        DefaultPool::new(base, size)
    }

    pub fn validate(&self) -> Result<(), IpamError> {
        require_network(DEFAULT_POOL_FIELD, self.base)?;
        let (prefix, max) = (self.base.prefix_len(), self.base.max_prefix_len());
        if self.size < prefix {
            let reason = format!("size /{} is shorter than the base prefix /{prefix}", self.size);
            return Err(IpamError::invalid(DEFAULT_POOL_FIELD, self, reason));
        }
        if self.size == 0 {
            let reason =
                "size /0 would make one network of the whole address space (overlapping every route); use /1 or longer";
            return Err(IpamError::invalid(DEFAULT_POOL_FIELD, self, reason));
        }
        if self.size > max {
            let reason = format!("size /{} is longer than /{max}", self.size);
            return Err(IpamError::invalid(DEFAULT_POOL_FIELD, self, reason));
        }
        Ok(())
    }

    pub(crate) fn family(&self) -> Family {
        Family::of_net(&self.base)
    }

    fn first_candidate(&self) -> u128 {
        first_value(&self.base)
    }

    fn last_candidate(&self) -> u128 {
        last_value(&self.base) - self.candidate_span()
    }

    /// Number of addresses in one candidate, minus one (a mask of its host bits).
    fn candidate_span(&self) -> u128 {
        let host_bits = u32::from(self.base.max_prefix_len() - self.size);
        u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
    }

    fn candidate_at(&self, start: u128) -> IpNet {
        IpNet::new(u128_to_addr(start, self.family()), self.size).expect("size validated")
    }

    /// The first candidate with start in `from..=to` (both candidate starts) that
    /// overlaps nothing in `blocked`. Jumps over each blocked range at once, so the cost
    /// depends on the number of blocked ranges, not of candidates.
    fn first_free_candidate(&self, from: u128, to: u128, blocked: &BlockedRanges) -> Option<u128> {
        let span = self.candidate_span();
        let mut start = from;
        while start <= to {
            let Some(block_end) = blocked.end_of_first_overlap(start, start + span) else {
                return Some(start);
            };
            let candidate_holding_block_end = start + ((block_end - start) & !span);
            if candidate_holding_block_end >= to {
                return None;
            }
            start = candidate_holding_block_end + span + 1;
        }
        None
    }
}

impl fmt::Display for DefaultPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.base, self.size)
    }
}

/// The size follows the first ':' after the '/', since IPv6 addresses contain ':' too.
fn split_cidr_and_size(text: &str) -> Option<(&str, &str)> {
    let slash = text.find('/')?;
    let colon = slash + text[slash..].find(':')?;
    Some((&text[..colon], &text[colon + 1..]))
}

/// Address ranges (of one family) a default pool candidate must not overlap:
/// sorted, merged, inclusive `u128` intervals.
pub(crate) struct BlockedRanges(Vec<(u128, u128)>);

impl BlockedRanges {
    pub(crate) fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut ranges: Vec<(u128, u128)> = nets.into_iter().map(|n| (first_value(&n), last_value(&n))).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        BlockedRanges(merged)
    }

    /// End of the first blocked range overlapping `start..=end`, if any.
    fn end_of_first_overlap(&self, start: u128, end: u128) -> Option<u128> {
        let index = self.0.partition_point(|&(_, block_end)| block_end < start);
        let &(block_start, block_end) = self.0.get(index)?;
        (block_start <= end).then_some(block_end)
    }
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    pool_index: usize,
    start: u128,
}

/// A stretch of candidates of one default pool, `from..=to` being candidate starts.
struct Segment {
    pool_index: usize,
    from: u128,
    to: u128,
}

/// Next-fit over the candidates of all default pools of a family. The search starts after
/// the candidate handed out last and stops before it, so the same candidate is never
/// answered twice in a row: dockerd repeats an identical request when it dislikes an
/// answer, possibly after releasing it. When nothing else is free the request fails and
/// the memory is cleared, so that a later request may get that candidate again.
#[derive(Debug, Default)]
pub(crate) struct DefaultPoolPicker {
    last_v4: Option<Candidate>,
    last_v6: Option<Candidate>,
}

impl DefaultPoolPicker {
    pub(crate) fn pick(
        &mut self,
        defaults: &[DefaultPool],
        family: Family,
        blocked: &BlockedRanges,
    ) -> Result<IpNet, IpamError> {
        let of_family: Vec<usize> = (0..defaults.len()).filter(|&i| defaults[i].family() == family).collect();
        if of_family.is_empty() {
            return Err(IpamError::NoDefaultPoolConfigured { family });
        }
        let last = match family {
            Family::V4 => &mut self.last_v4,
            Family::V6 => &mut self.last_v6,
        };
        let found = search_order(defaults, &of_family, *last).into_iter().find_map(|segment| {
            let pool = &defaults[segment.pool_index];
            let start = pool.first_free_candidate(segment.from, segment.to, blocked)?;
            Some(Candidate { pool_index: segment.pool_index, start })
        });
        *last = found;
        match found {
            Some(candidate) => Ok(defaults[candidate.pool_index].candidate_at(candidate.start)),
            None => Err(IpamError::NoFreeDefaultPool { candidates: describe(defaults, &of_family) }),
        }
    }
}

fn search_order(defaults: &[DefaultPool], family: &[usize], last: Option<Candidate>) -> Vec<Segment> {
    let whole = |pool_index: usize| Segment {
        pool_index,
        from: defaults[pool_index].first_candidate(),
        to: defaults[pool_index].last_candidate(),
    };
    let position = last.and_then(|c| family.iter().position(|&i| i == c.pool_index));
    let (Some(last), Some(position)) = (last, position) else {
        return family.iter().map(|&i| whole(i)).collect();
    };
    let pool = &defaults[last.pool_index];
    // Only computed where a neighbouring candidate exists: a candidate of the
    // whole address space has a step of 2^128.
    let step = || pool.candidate_span() + 1;
    let mut segments = Vec::with_capacity(family.len() + 1);
    if last.start < pool.last_candidate() {
        segments.push(Segment { pool_index: last.pool_index, from: last.start + step(), to: pool.last_candidate() });
    }
    let others = family[position + 1..].iter().chain(&family[..position]);
    segments.extend(others.map(|&i| whole(i)));
    if last.start > pool.first_candidate() {
        segments.push(Segment { pool_index: last.pool_index, from: pool.first_candidate(), to: last.start - step() });
    }
    segments
}

fn describe(defaults: &[DefaultPool], family: &[usize]) -> String {
    family.iter().map(|&i| defaults[i].to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_and_v6() {
        assert_eq!(
            DefaultPool::parse("10.210.0.0/16:24").unwrap(),
            DefaultPool { base: net("10.210.0.0/16"), size: 24 }
        );
        assert_eq!(DefaultPool::parse(" fd5c:0:0::/48:64 ").unwrap(), DefaultPool { base: net("fd5c::/48"), size: 64 });
        assert_eq!(DefaultPool::parse("10.0.0.0/8:8").unwrap().to_string(), "10.0.0.0/8:8");
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let message = |s: &str| DefaultPool::parse(s).unwrap_err().to_string();
        assert_eq!(
            message("10.210.0.0/16"),
            "invalid default pool \"10.210.0.0/16\": expected CIDR:SIZE, e.g. 10.210.0.0/16:24"
        );
        assert_eq!(
            message("fd5c::/48"),
            "invalid default pool \"fd5c::/48\": expected CIDR:SIZE, e.g. 10.210.0.0/16:24"
        );
        assert!(message("10.210.0.0/33:34").contains("\"10.210.0.0/33\" is not a valid CIDR network"));
        assert!(message("10.210.0.0/16:x").contains("\"x\" is not a valid prefix length"));
        assert!(message("10.210.0.1/16:24").contains("host bits set (did you mean 10.210.0.0/16?)"));
        assert!(message("10.210.0.0/16:8").contains("size /8 is shorter than the base prefix /16"));
        assert!(message("10.210.0.0/16:33").contains("size /33 is longer than /32"));
    }

    #[test]
    fn builtin_defaults() {
        let defaults = default_pools();
        assert_eq!(defaults.len(), 2);
        assert_eq!(defaults[0].to_string(), "10.210.0.0/16:24");
        assert_eq!(defaults[1].to_string(), "fdb7:7b00::/40:64");
    }

    #[test]
    fn blocked_ranges_merge_and_find_overlaps() {
        let blocked =
            BlockedRanges::new([net("10.0.2.0/24"), net("10.0.0.0/16"), net("10.1.0.0/24"), net("192.168.0.0/24")]);
        assert_eq!(blocked.0.len(), 3);
        let v = |s: &str| first_value(&net(s));
        assert_eq!(
            blocked.end_of_first_overlap(v("10.0.5.0/32"), v("10.0.5.255/32")),
            Some(last_value(&net("10.0.0.0/16")))
        );
        assert_eq!(blocked.end_of_first_overlap(v("10.2.0.0/32"), v("10.2.0.255/32")), None);
        assert_eq!(blocked.end_of_first_overlap(v("10.1.0.128/32"), v("10.1.0.128/32")), Some(v("10.1.0.255/32")));
    }

    #[test]
    fn candidate_search_jumps_over_large_blocks() {
        let pool = DefaultPool::parse("fd00::/40:64").unwrap();
        let blocked = BlockedRanges::new([net("fd00::/41")]);
        let start = pool.first_free_candidate(pool.first_candidate(), pool.last_candidate(), &blocked).unwrap();
        assert_eq!(pool.candidate_at(start), net("fd00:0:80::/64"));
        let everything = BlockedRanges::new([net("fd00::/40")]);
        assert_eq!(pool.first_free_candidate(pool.first_candidate(), pool.last_candidate(), &everything), None);
    }

    #[test]
    fn candidate_search_skips_small_blocks_inside_a_candidate() {
        let pool = DefaultPool::parse("10.0.0.0/22:24").unwrap();
        let blocked = BlockedRanges::new([net("10.0.0.7/32"), net("10.0.1.128/25")]);
        let start = pool.first_free_candidate(pool.first_candidate(), pool.last_candidate(), &blocked).unwrap();
        assert_eq!(pool.candidate_at(start), net("10.0.2.0/24"));
    }

    #[test]
    fn whole_space_default_pool_has_one_candidate() {
        // Refused by parse (below), but the arithmetic must hold for any record.
        let pool = DefaultPool { base: net("::/0"), size: 0 };
        assert_eq!(pool.candidate_span(), u128::MAX);
        assert_eq!(pool.first_candidate(), pool.last_candidate());
        let none = BlockedRanges::new([]);
        assert_eq!(pool.first_free_candidate(0, 0, &none), Some(0));
        let some = BlockedRanges::new([net("fd00::/64")]);
        assert_eq!(pool.first_free_candidate(0, 0, &some), None);
        // Picking again after it once overflowed (the step past it is 2^128);
        // never the same candidate twice in a row, so the second pick fails.
        let mut picker = DefaultPoolPicker::default();
        let defaults = [pool];
        assert_eq!(picker.pick(&defaults, Family::V6, &none).unwrap(), net("::/0"));
        assert!(matches!(picker.pick(&defaults, Family::V6, &none), Err(IpamError::NoFreeDefaultPool { .. })));
        assert_eq!(picker.pick(&defaults, Family::V6, &none).unwrap(), net("::/0"));
    }

    /// Issue 11 item 4: `::/0:0` overflowed; it is refused with the reason.
    #[test]
    fn a_default_pool_of_the_whole_address_space_is_refused() {
        for text in ["::/0:0", "0.0.0.0/0:0"] {
            let err = DefaultPool::parse(text).unwrap_err().to_string();
            assert!(err.contains("size /0 would make one network of the whole address space"), "{err}");
        }
        assert!(DefaultPool::parse("::/0:1").is_ok());
    }
}
