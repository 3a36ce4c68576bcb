//! Chained xxhash64 block hashes of a prompt, computed incrementally as the body arrives.
//!
//! Like GIE's approximate prefix plugin: the prompt is cut into fixed-size blocks, and each
//! block's hash is seeded with the previous block's hash (the first with a hash of the model
//! name), so a block hash stands for the whole prefix up to it. Only full blocks are hashed: an
//! engine caches full KV blocks only, so a partial tail can never be a cache hit. Hashing runs on
//! the bytes as they stream in, so an endpoint picker never rescans a long prompt.
use xxhash_rust::xxh64::{Xxh64, xxh64};

use super::request::BlockHash;

/// Bytes per block: about 64 tokens at ~4 bytes per token.
pub const DEFAULT_BLOCK_BYTES: usize = 256;
/// Blocks hashed at most per request (GIE's `maxPrefixBlocksToMatch` default): 64 KiB of prompt.
pub const DEFAULT_MAX_BLOCKS: usize = 256;
/// Tokens per block for token-id hashing (the simulation), matching [`DEFAULT_BLOCK_BYTES`].
pub const DEFAULT_BLOCK_TOKENS: usize = 64;

fn model_seed(model: &str) -> u64 {
    xxh64(model.as_bytes(), 0)
}

/// Incremental prefix hasher: feed body bytes in any chunking, get the same block hashes.
#[derive(Clone)]
pub struct PrefixHasher {
    block_bytes: usize,
    max_blocks: usize,
    current: Xxh64,
    filled: usize,
    hashes: Vec<BlockHash>,
}

impl std::fmt::Debug for PrefixHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixHasher")
            .field("block_bytes", &self.block_bytes)
            .field("max_blocks", &self.max_blocks)
            .field("blocks", &self.hashes.len())
            .finish()
    }
}

impl PrefixHasher {
    /// A hasher with the default block size and cap. Hashes are seeded with `model`, so the same
    /// text sent to two models never matches.
    pub fn new(model: &str) -> Self {
        Self::with_blocks(model, DEFAULT_BLOCK_BYTES, DEFAULT_MAX_BLOCKS)
    }

    /// `block_bytes` and `max_blocks` are raised to at least 1.
    pub fn with_blocks(model: &str, block_bytes: usize, max_blocks: usize) -> Self {
        let max_blocks = max_blocks.max(1);
        Self {
            block_bytes: block_bytes.max(1),
            max_blocks,
            current: Xxh64::new(model_seed(model)),
            filled: 0,
            hashes: Vec::with_capacity(max_blocks.min(64)),
        }
    }

    /// Feeds the next bytes of the body.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.hashes.len() < self.max_blocks {
            let take = (self.block_bytes - self.filled).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.current.update(head);
            self.filled += take;
            bytes = rest;
            if self.filled == self.block_bytes {
                let hash = self.current.digest();
                self.hashes.push(hash);
                self.current = Xxh64::new(hash);
                self.filled = 0;
            }
        }
    }

    /// Whether the cap was reached (further bytes are ignored).
    pub fn is_full(&self) -> bool {
        self.hashes.len() >= self.max_blocks
    }

    /// Hashes of the full blocks so far.
    pub fn hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    pub fn finish(self) -> Vec<BlockHash> {
        self.hashes
    }
}

/// Block hashes of a tokenised prompt (the simulation's path): `block_tokens` token ids per
/// block, little-endian, chained and model-seeded like [`PrefixHasher`].
pub fn hash_token_blocks(model: &str, tokens: &[u32], block_tokens: usize) -> Vec<BlockHash> {
    let block_tokens = block_tokens.max(1);
    let mut seed = model_seed(model);
    let mut bytes = Vec::with_capacity(block_tokens * 4);
    tokens
        .chunks_exact(block_tokens)
        .map(|block| {
            bytes.clear();
            for token in block {
                bytes.extend_from_slice(&token.to_le_bytes());
            }
            seed = xxh64(&bytes, seed);
            seed
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_all(model: &str, body: &[u8], chunk: usize) -> Vec<BlockHash> {
        let mut hasher = PrefixHasher::with_blocks(model, 16, 100);
        for piece in body.chunks(chunk) {
            hasher.update(piece);
        }
        hasher.finish()
    }

    #[test]
    fn chunking_does_not_change_the_hashes() {
        let body: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = hash_all("m", &body, body.len());
        assert_eq!(whole.len(), 200 / 16, "only full blocks are hashed");
        for chunk in [1, 3, 15, 16, 17, 64] {
            assert_eq!(hash_all("m", &body, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn hashes_chain_and_depend_on_the_model() {
        let a = hash_all("m", b"0123456789abcdef0123456789abcdefXXXX", 5);
        let b = hash_all("m", b"0123456789abcdef0123456789abcdeYXXXX", 5);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // Same block content at another depth hashes differently (chained).
        assert_ne!(a[0], a[1]);
        assert_ne!(hash_all("other", b"0123456789abcdef", 16), a[..1].to_vec());
    }

    #[test]
    fn cap_stops_hashing() {
        let mut hasher = PrefixHasher::with_blocks("m", 4, 2);
        hasher.update(&[1; 100]);
        assert!(hasher.is_full());
        assert_eq!(hasher.hashes().len(), 2);
    }

    #[test]
    fn token_blocks_share_prefixes() {
        let shared: Vec<u32> = (0..128).collect();
        let mut a = shared.clone();
        a.extend(1000..1064);
        let mut b = shared;
        b.extend(2000..2070);
        let ha = hash_token_blocks("m", &a, 64);
        let hb = hash_token_blocks("m", &b, 64);
        assert_eq!((ha.len(), hb.len()), (3, 3));
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
    }
}
