//! The selection table: `SELECTION_SLOTS` one-byte slots indexing the pool's eligible backends
//! (carried in the table itself), each backend holding a share of slots proportional to its
//! weight. BPF draws a uniformly random
//! slot per connect, so a backend's chance equals its share of the table.
//!
//! Shares use the largest-remainder (Hamilton) method: floors of the exact quotas, leftovers by
//! largest remainder (ties to the lower address), so each backend is within one slot of its exact
//! share (0.006% of the table). A positive weight that rounds to zero still gets one slot, taken
//! from the largest holder. Backends with weight 0 or marked down get no slot.
use std::collections::BTreeMap;

use router_common::{MAX_BACKENDS_PER_POOL, SELECTION_SLOTS, SelectionTable, SlotBackend};

use super::{
    addr::{family, ip_words, port_be},
    spec::BackendSpec,
};

/// Slots per backend for `weights` over a table of `slots` slots, in input order.
///
/// Weight 0 gets 0 slots; every positive weight at least 1. Requires the number of positive
/// weights to be at most `slots` (validation caps a pool far below the table size).
pub fn slot_counts(weights: &[u32], slots: usize) -> Vec<usize> {
    let positive = weights.iter().filter(|&&w| w > 0).count();
    let mut counts = vec![0usize; weights.len()];
    if positive == 0 || positive > slots {
        return counts;
    }
    // Hamilton apportionment: floors of the exact quotas, leftovers by largest remainder.
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut remainders = Vec::with_capacity(positive);
    let mut given = 0usize;
    for (i, &weight) in weights.iter().enumerate() {
        if weight == 0 {
            continue;
        }
        let quota = slots as u64 * u64::from(weight);
        // quota / total <= slots, so it fits a usize.
        counts[i] = (quota / total) as usize;
        given += counts[i];
        remainders.push((quota % total, i));
    }
    // Largest remainder first; equal remainders go to the earlier (lower-address) backend.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(slots - given) {
        counts[i] += 1;
    }
    // A tiny weight next to huge ones can round to nothing: give it one slot, taken from the
    // largest holder (which has far more than one, as a pool has far fewer backends than slots).
    for i in 0..weights.len() {
        if weights[i] > 0 && counts[i] == 0 {
            let largest = (0..counts.len())
                .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)))
                .unwrap_or(i);
            counts[largest] -= 1;
            counts[i] = 1;
        }
    }
    counts
}

/// Builds a pool's table from `(backend id, spec)` pairs sorted by address (as validation
/// leaves them). `None` when no backend is eligible: the pool then refuses connects.
pub fn build_table(backends: &[(u32, BackendSpec)]) -> Option<Box<SelectionTable>> {
    let eligible: Vec<&(u32, BackendSpec)> =
        backends.iter().filter(|(_, s)| s.eligible()).collect();
    let weights: Vec<u32> = eligible.iter().map(|(_, spec)| spec.weight).collect();
    let counts = slot_counts(&weights, SELECTION_SLOTS);
    if eligible.is_empty() || eligible.len() > MAX_BACKENDS_PER_POOL {
        return None;
    }
    let mut table = Box::new(SelectionTable::EMPTY);
    let mut next = 0;
    for (index, ((id, spec), count)) in eligible.iter().zip(counts).enumerate() {
        table.backends[index] = SlotBackend {
            addr: ip_words(spec.addr.ip()),
            port_be: port_be(spec.addr.port()),
            family: family(spec.addr),
            _pad: 0,
            id: *id,
        };
        // index < MAX_BACKENDS_PER_POOL <= 256 (checked above).
        table.slots[next..next + count].fill(index as u8);
        next += count;
    }
    spread(&mut table.slots);
    Some(table)
}

/// Slots per backend id in `table` (for `show` and checks: read back from the kernel's table).
pub fn table_shares(table: &SelectionTable) -> BTreeMap<u32, (SlotBackend, usize)> {
    let mut per_index = [0usize; MAX_BACKENDS_PER_POOL];
    for &index in &table.slots {
        per_index[usize::from(index)] += 1;
    }
    table
        .backends
        .iter()
        .zip(per_index)
        .filter(|(backend, slots)| backend.id != 0 && *slots > 0)
        .map(|(backend, slots)| (backend.id, (*backend, slots)))
        .collect()
}

/// Deterministic Fisher-Yates shuffle, so one backend's slots are spread over the table rather
/// than contiguous: the random draw does not need it, but any future index with local bias
/// (e.g. a hash of a cookie) still sees the weights. A fixed splitmix64 stream keeps the layout
/// identical across builds and nodes (a library RNG makes no such promise).
fn spread(slots: &mut [u8]) {
    let mut state: u64 = 0x5eed_5317_c4a1_1e57;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..slots.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        slots.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use router_common::MAX_WEIGHT;

    use super::*;

    fn spec(port: u16, weight: u32, down: bool) -> BackendSpec {
        BackendSpec {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            down,
        }
    }

    #[test]
    fn counts_are_proportional_and_fill_the_table() {
        let counts = slot_counts(&[3, 1], SELECTION_SLOTS);
        assert_eq!(counts.iter().sum::<usize>(), SELECTION_SLOTS);
        let ideal = SELECTION_SLOTS as f64 * 0.75;
        assert!((counts[0] as f64 - ideal).abs() < 1.0, "{counts:?}");

        let weights = [5, 17, 1, 100, 33];
        let counts = slot_counts(&weights, SELECTION_SLOTS);
        let total: u32 = weights.iter().sum();
        assert_eq!(counts.iter().sum::<usize>(), SELECTION_SLOTS);
        for (w, c) in weights.iter().zip(&counts) {
            let ideal = SELECTION_SLOTS as f64 * f64::from(*w) / f64::from(total);
            assert!(
                (*c as f64 - ideal).abs() < 1.0,
                "weight {w}: {c} slots, ideal {ideal}"
            );
        }
    }

    #[test]
    fn equal_weights_get_equal_shares_up_to_one_slot() {
        let counts = slot_counts(&[7; 10], SELECTION_SLOTS);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn every_positive_weight_gets_a_slot_even_against_huge_ones() {
        let mut weights = vec![MAX_WEIGHT; 255];
        weights.push(1);
        let counts = slot_counts(&weights, SELECTION_SLOTS);
        assert_eq!(counts[255], 1);
        assert!(counts.iter().all(|&c| c >= 1));
        assert_eq!(counts.iter().sum::<usize>(), SELECTION_SLOTS);
    }

    #[test]
    fn zero_weight_and_down_backends_hold_no_slot() {
        let backends = [
            (1, spec(1, 3, false)),
            (2, spec(2, 0, false)),
            (3, spec(3, 9, true)),
            (4, spec(4, 1, false)),
        ];
        let table = build_table(&backends).unwrap();
        let shares = table_shares(&table);
        assert_eq!(shares.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(
            shares.values().map(|(_, n)| n).sum::<usize>(),
            SELECTION_SLOTS
        );
        // Every slot points at a filled entry carrying the backend's address.
        assert!(
            table
                .slots
                .iter()
                .all(|&i| table.backends[usize::from(i)].id != 0)
        );
        assert_eq!(shares[&4].0.addr, ip_words(backends[3].1.addr.ip()));
        assert_eq!(u16::from_be(shares[&4].0.port_be), 4);
    }

    #[test]
    fn no_eligible_backend_builds_no_table() {
        assert!(build_table(&[(1, spec(1, 0, false)), (2, spec(2, 4, true))]).is_none());
        assert!(build_table(&[]).is_none());
    }

    #[test]
    fn a_full_pool_fits_the_table() {
        let backends: Vec<_> = (0..MAX_BACKENDS_PER_POOL as u16)
            .map(|i| {
                (
                    u32::from(i) + 1,
                    spec(1000 + i, 1 + u32::from(i % 7), false),
                )
            })
            .collect();
        let table = build_table(&backends).unwrap();
        let shares = table_shares(&table);
        assert_eq!(shares.len(), MAX_BACKENDS_PER_POOL);
        assert_eq!(
            shares.values().map(|(_, n)| n).sum::<usize>(),
            SELECTION_SLOTS
        );
    }

    #[test]
    fn tables_are_deterministic_and_spread() {
        let backends = [(10, spec(1, 3, false)), (11, spec(2, 1, false))];
        let a = build_table(&backends).unwrap();
        let b = build_table(&backends).unwrap();
        assert_eq!(a, b);
        // Spread: the first quarter of the table holds both backends, near their shares.
        let quarter = &a.slots[..SELECTION_SLOTS / 4];
        let first = quarter
            .iter()
            .filter(|&&i| a.backends[usize::from(i)].id == 10)
            .count() as f64
            / quarter.len() as f64;
        assert!(
            (first - 0.75).abs() < 0.05,
            "share of id 10 in the first quarter: {first}"
        );
    }

    #[test]
    fn shares_match_counts() {
        let backends = [(1, spec(1, 2, false)), (2, spec(2, 5, false))];
        let table = build_table(&backends).unwrap();
        let shares = table_shares(&table);
        let counts = slot_counts(&[2, 5], SELECTION_SLOTS);
        assert_eq!(shares[&1].1, counts[0]);
        assert_eq!(shares[&2].1, counts[1]);
    }
}
