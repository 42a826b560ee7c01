//! The in-process claim store: one replica's memory of (source, event ID) claims.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Claim, Token};
use crate::kv::millis;

/// The in-process claim store, keyed by a 128-bit digest of (source, event ID).
///
/// Every entry lives for the same TTL, so insertion order is expiry order: each shard keeps a
/// map plus a FIFO of keys, and the FIFO's front is always the next entry to expire or, past the
/// bound, the oldest to evict (the retry least likely to come). No per-entry timers or eviction
/// policy: moka cost about 8 µs and 380 bytes per event on this path; this costs one
/// uncontended lock and 41 bytes (the 16-byte key in the map and again in the queue, an 8-byte
/// entry, a control byte), 45 to 90 with the table's and queue's growth slack. At the default
/// bound that is most of the memory of a busy replica, so every byte here counts.
pub(super) struct MemoryDedup {
    pub(super) shards: Box<[Mutex<Shard>]>,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    ttl_ms: u64,
    pending_ms: u64,
    per_shard: usize,
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) map: HashMap<Key, Entry>,
    /// Keys in the order they were put. A key put again (a takeover, or a completion after
    /// eviction) is queued twice; the older copy is dropped when it reaches the front, judged
    /// by the entry's own time.
    order: VecDeque<Key>,
}

/// A remembered claim in one word: the millisecond it was made, with [`DONE`] set once the
/// event is durable.
///
/// The time doubles as the claim's identity, which a stale release is checked against: a
/// second claim of a key only replaces a pending one after the pending deadline (many
/// milliseconds later), so two claims of one key never share a millisecond.
#[derive(Clone, Copy)]
pub(super) struct Entry(u64);

/// Millisecond clocks never reach the top bit.
const DONE: u64 = 1 << 63;

impl Entry {
    fn at_ms(self) -> u64 {
        self.0 & !DONE
    }

    fn is_done(self) -> bool {
        self.0 & DONE != 0
    }
}

const SHARDS: usize = 16;

/// 128 bits as two words rather than a `u128`: 8-byte alignment packs a map slot into 24 bytes
/// instead of 32.
pub(super) type Key = [u64; 2];

impl MemoryDedup {
    pub(super) fn new(ttl: Duration, pending_ttl: Duration, max_entries: u64) -> Self {
        let per_shard = usize::try_from(max_entries).unwrap_or(usize::MAX) / SHARDS;
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epoch: Instant::now(),
            ttl_ms: millis(ttl),
            // At least a millisecond, so that claim times stay distinct (see `Entry`).
            pending_ms: millis(pending_ttl).max(1),
            per_shard: per_shard.max(1),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, Shard> {
        // The key is a hash already: its low bits spread evenly. Every mutation under the lock
        // is a single map or queue call, so a poisoned lock still guards a consistent shard.
        #[allow(clippy::cast_possible_truncation)]
        let i = (key[1] as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn claim(&self, key: Key) -> Claim {
        let now = self.now_ms();
        let mut shard = self.shard(key);
        shard.expire(now, self.ttl_ms, self.per_shard);
        if let Some(&e) = shard.map.get(&key) {
            if e.is_done() {
                return Claim::Done;
            }
            // A claim left pending past its deadline is taken over: its request is gone.
            if now < e.at_ms().saturating_add(self.pending_ms) {
                return Claim::InFlight;
            }
        }
        shard.put(key, Entry(now));
        Claim::New(Token::Memory { key, at_ms: now })
    }

    pub(super) fn complete(&self, key: Key) {
        let mut shard = self.shard(key);
        match shard.map.get_mut(&key) {
            Some(e) => e.0 |= DONE,
            // Evicted meanwhile: remember it again, from now.
            None => {
                let now = self.now_ms();
                shard.put(key, Entry(now | DONE));
            }
        }
    }

    /// Forgets the claim made at `at_ms`, unless a newer claim or a completion replaced it.
    pub(super) fn release(&self, key: Key, at_ms: u64) {
        let mut shard = self.shard(key);
        if shard
            .map
            .get(&key)
            .is_some_and(|e| !e.is_done() && e.at_ms() == at_ms)
        {
            shard.map.remove(&key);
        }
    }
}

impl Shard {
    fn put(&mut self, key: Key, entry: Entry) {
        self.map.insert(key, entry);
        self.order.push_back(key);
    }

    /// Drops expired entries, then the oldest ones past the bound.
    ///
    /// A key queued twice (a takeover, or a completion after eviction) holds the queue at its
    /// older copy until the younger entry expires: entries behind it are then remembered past
    /// their TTL, which only delays forgetting events that were durable anyway. Past the bound,
    /// the older copy evicts the younger entry: at worst a duplicate publish, never a loss.
    fn expire(&mut self, now_ms: u64, ttl_ms: u64, bound: usize) {
        while let Some(&key) = self.order.front() {
            let over_bound = self.map.len() >= bound || self.order.len() >= bound * 2;
            let expired = self
                .map
                .get(&key)
                .is_none_or(|e| e.at_ms().saturating_add(ttl_ms) <= now_ms);
            if !expired && !over_bound {
                break;
            }
            self.order.pop_front();
            self.map.remove(&key);
        }
    }
}

/// The memory backend's key: the first 128 bits of SHA-256 (collisions are out of reach at any
/// realistic number of remembered events).
pub(super) fn digest(source: &str, id: &str) -> Key {
    use sha2::Digest as _;
    // NUL cannot occur in a source name, so (source, id) pairs never run together.
    let d = sha2::Sha256::new()
        .chain_update(source)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    [word(0), word(1)]
}
