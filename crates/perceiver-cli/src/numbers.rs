//! Whole-number options in a range, refused in words: clap's ranged parsers answer `-k 0` with
//! "0 is not in 1..=4294967295", a bound nobody typed.

use std::num::{IntErrorKind, ParseIntError};

/// A value parser of whole numbers from `min` to `max` as a `T` (which must hold `max`). A value
/// out of range is refused with "must be at least {min}" or "must be at most {max}", anything
/// else with "not a whole number"; clap names the option and the value before that.
pub(crate) fn whole<T>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    move |text: &str| {
        let too_large = || format!("must be at most {max}");
        let n: u64 = text.parse().map_err(|e: ParseIntError| match e.kind() {
            IntErrorKind::PosOverflow => too_large(),
            _ => "not a whole number".to_string(),
        })?;
        if n < min {
            return Err(format!("must be at least {min}"));
        }
        if n > max {
            return Err(too_large());
        }
        T::try_from(n).map_err(|_| too_large())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_said_in_words() {
        let top_k = whole::<u32>(1, u32::MAX.into());
        assert_eq!(top_k("5"), Ok(5));
        assert_eq!(top_k("0"), Err("must be at least 1".to_string()));
        assert_eq!(top_k("4294967296"), Err("must be at most 4294967295".to_string()));
        assert_eq!(
            top_k("99999999999999999999"),
            Err("must be at most 4294967295".to_string())
        );
        for bad in ["", "-1", "1.5", "five", " 5"] {
            assert_eq!(top_k(bad), Err("not a whole number".to_string()), "{bad:?}");
        }
        let wait = whole::<u64>(0, 1_000_000);
        assert_eq!(wait("0"), Ok(0));
        assert_eq!(wait("1000001"), Err("must be at most 1000000".to_string()));
    }
}
