//! The one small seeded generator of the test crate (SplitMix64, Steele, Lea, Flood 2014): tiny,
//! fast, and good enough to pick header fields, shapes and addresses. The fuzzers derive one
//! stream per frame or case from the run's seed and its index, so `(seed, index)` alone
//! rebuilds it without replaying the others.

#[derive(Clone, Debug)]
pub struct Rng(u64);

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
/// Rotation that decorrelates neighbouring case indices in [`Rng::for_case`].
const CASE_ROTATION: u32 = 17;

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The stream of frame `index` of the in-process verdict fuzzer seeded with `seed`.
    pub fn for_frame(seed: u64, index: u64) -> Self {
        // One splitmix step each, so neighbouring seeds and indices give unrelated streams.
        let base = Rng(seed).next_u64();
        Rng(Rng(base ^ index.wrapping_mul(GOLDEN_GAMMA)).next_u64())
    }

    /// The stream of case `index` of a wire-fuzz campaign seeded with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Self {
        let mut mixer = Rng(seed ^ index.wrapping_mul(GOLDEN_GAMMA).rotate_left(CASE_ROTATION));
        Self(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0). The modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn coin(&mut self) -> bool {
        self.one_in(2)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.next_u64() % denominator < numerator
    }

    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u8()).collect()
    }

    /// Between `lo` and `hi` random bytes.
    pub fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let len = self.range(lo, hi);
        self.bytes(len)
    }

    /// A small length, most often tiny: `0..=max` with smaller values far more likely, so
    /// chains stay short and frames small while the large values still appear.
    pub fn small(&mut self, max: usize) -> usize {
        let cap = self.range(0, max);
        self.range(0, cap)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_only_on_seed_and_index() {
        for derive in [Rng::for_frame, Rng::for_case] {
            let a: Vec<u64> = (0..4).map(|_| derive(7, 42).next_u64()).collect();
            assert!(a.windows(2).all(|w| w[0] == w[1]));
            assert_ne!(derive(7, 42).next_u64(), derive(7, 43).next_u64());
            assert_ne!(derive(7, 42).next_u64(), derive(8, 42).next_u64());
        }
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| (3..=5).contains(&r.range(3, 5))));
    }
}
