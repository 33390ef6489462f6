//! A small deterministic generator: splitmix64. Every frame gets its own stream, derived from
//! the run's seed and the frame's index, so `(seed, index)` alone reproduces a frame (no state
//! carried from one frame to the next, any frame can be regenerated in isolation).

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick header fields.
#[derive(Clone, Debug)]
pub struct Rng(u64);

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Rng {
    /// The stream of frame `index` of the run seeded with `seed`.
    pub fn for_frame(seed: u64, index: u64) -> Self {
        // Mix the pair through one splitmix step each so neighbouring seeds and indices give
        // unrelated streams.
        let mut outer = Rng(seed);
        let base = outer.next_u64();
        let mut inner = Rng(base ^ index.wrapping_mul(GOLDEN_GAMMA));
        Rng(inner.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0). The modulo bias is irrelevant for picking header fields.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn coin(&mut self) -> bool {
        self.one_in(2)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A small length, most often tiny: `0..=max` with smaller values far more likely, so
    /// chains stay short and frames small while the large values still appear.
    pub fn small(&mut self, max: usize) -> usize {
        let cap = self.range(0, max);
        self.range(0, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_stream_depends_only_on_seed_and_index() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_frame(7, 42).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::for_frame(7, 42).next_u64(),
            Rng::for_frame(7, 43).next_u64()
        );
        assert_ne!(
            Rng::for_frame(7, 42).next_u64(),
            Rng::for_frame(8, 42).next_u64()
        );
    }
}
