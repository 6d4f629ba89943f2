//! CRC-32C (Castagnoli) of frames, as the `crc32c` crate computes it,
//! with a faster path for the short pieces a frame is checksummed in.
//!
//! Hand-written because it is measurably faster here: a frame's checksum
//! covers three pieces (16 header bytes, the fixed fields, the payload),
//! and most are tens of bytes. The crate aligns each piece a byte at a
//! time and splits it for its three-way parallel loop whatever the
//! length: ~165 instructions per call in the gate's runtime path, 14% of
//! a command's instructions. Below `SHORT_BYTES` (where the crate's
//! parallel loop starts: 3 × its 256-byte block) this walks the piece
//! eight bytes at a time (unaligned loads are fine on x86-64); longer
//! pieces go to the crate, whose parallel loop wins there.

/// Pieces shorter than this take the short path.
const SHORT_BYTES: usize = 768;

/// The CRC-32C of `data` continued from `crc` (the crate's
/// `crc32c_append`).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() < SHORT_BYTES && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: SSE 4.2, the function's one target feature, is present
        // (checked just above).
        return unsafe { short_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// # Safety
/// The CPU must support SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn short_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u32, _mm_crc32_u64};
    let mut c = u64::from(!crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut c = c as u32;
    let mut rest = words.remainder();
    if rest.len() >= 4 {
        c = _mm_crc32_u32(
            c,
            u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")),
        );
        rest = &rest[4..];
    }
    for &b in rest {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The crate's value for every length across the short path's
        /// bound, from any starting value.
        #[test]
        fn agrees_with_the_crate(data in prop::collection::vec(any::<u8>(), 0..1600), crc in any::<u32>(), skip in 0usize..8) {
            let d = &data[skip.min(data.len())..];
            prop_assert_eq!(crc32c_append(crc, d), crc32c::crc32c_append(crc, d));
            prop_assert_eq!(crc32c(d), crc32c::crc32c(d));
        }
    }

    #[test]
    fn the_standard_check_value() {
        // CRC-32C of "123456789" (RFC 3720's check value).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
