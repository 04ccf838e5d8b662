//! The librsync weak checksum ("rollsum"), as fast_rsync writes it into signatures. It only
//! finds candidate blocks; the MD4 strong sum confirms a candidate, and the file's SHA-256 in
//! the signed manifest is what finally vouches for the bytes.

const CHAR_OFFSET: u16 = 31;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollsum {
    s1: u16,
    s2: u16,
}

impl Rollsum {
    /// The sum of a whole block.
    pub fn of(block: &[u8]) -> Rollsum {
        let mut r = Rollsum::default();
        for &b in block {
            r.s1 = r.s1.wrapping_add(u16::from(b));
            r.s2 = r.s2.wrapping_add(r.s1);
        }
        let len = block.len() as u32;
        r.s1 = r.s1.wrapping_add((len as u16).wrapping_mul(CHAR_OFFSET));
        r.s2 = r.s2.wrapping_add(
            ((len.wrapping_mul(len.wrapping_add(1)) / 2) as u16).wrapping_mul(CHAR_OFFSET),
        );
        r
    }

    /// Slide a window of `size` bytes one byte forward: `old` leaves, `new` enters.
    #[inline]
    pub fn rotate(&mut self, size: u32, old: u8, new: u8) {
        let size = size as u16;
        let (old, new) = (u16::from(old), u16::from(new));
        self.s1 = self.s1.wrapping_add(new).wrapping_sub(old);
        self.s2 = self
            .s2
            .wrapping_add(self.s1)
            .wrapping_sub(size.wrapping_mul(old.wrapping_add(CHAR_OFFSET)));
    }

    pub fn digest(&self) -> u32 {
        u32::from(self.s1) | (u32::from(self.s2) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_equals_recomputing() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let n = 64;
        let mut r = Rollsum::of(&data[..n]);
        for i in 0..data.len() - n {
            r.rotate(n as u32, data[i], data[i + n]);
            assert_eq!(
                r.digest(),
                Rollsum::of(&data[i + 1..i + 1 + n]).digest(),
                "at {i}"
            );
        }
    }

    #[test]
    fn matches_fast_rsync_signatures() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let sig = fast_rsync::Signature::calculate(
            &data,
            fast_rsync::SignatureOptions {
                block_size: 1024,
                crypto_hash_size: 8,
            },
        );
        let bytes = sig.serialized();
        // header: magic, block size, strong size; then (weak u32 BE, strong 8 bytes) per block
        for (i, block) in data.chunks(1024).enumerate() {
            let at = 12 + i * 12;
            let weak = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            assert_eq!(weak, Rollsum::of(block).digest(), "block {i}");
        }
    }
}
