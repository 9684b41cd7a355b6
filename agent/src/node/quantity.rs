//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e3") as integers.

/// The value × 1000 (milli-units), rounded up; None if `s` is not a quantity.
pub fn milli(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let neg = int_part.starts_with('-');
    let int_digits = int_part.trim_start_matches(['+', '-']);
    if int_digits.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_digits.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = digits / 10^frac_len, kept exact as (mantissa, scale).
    let mantissa: i128 = format!("{int_digits}{frac_part}").parse().ok()?;
    let mut scale_den: i128 = 10i128.checked_pow(frac_part.len() as u32)?;
    let mut mult: i128 = 1000;
    match suffix {
        "" => {}
        "n" => scale_den = scale_den.checked_mul(1_000_000)?,
        "u" => scale_den = scale_den.checked_mul(1_000)?,
        "m" => mult = 1,
        "k" => mult *= 1_000,
        "M" => mult *= 1_000_000,
        "G" => mult *= 1_000_000_000,
        "T" => mult *= 1_000_000_000_000,
        "P" => mult *= 1_000_000_000_000_000,
        "E" => mult *= 1_000_000_000_000_000_000,
        "Ki" => mult *= 1 << 10,
        "Mi" => mult *= 1 << 20,
        "Gi" => mult *= 1 << 30,
        "Ti" => mult *= 1 << 40,
        "Pi" => mult *= 1 << 50,
        "Ei" => mult *= 1 << 60,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp >= 0 {
                mult = mult.checked_mul(10i128.checked_pow(exp as u32)?)?;
            } else {
                scale_den = scale_den.checked_mul(10i128.checked_pow((-exp) as u32)?)?;
            }
        }
        _ => return None,
    }
    let n = mantissa.checked_mul(mult)?;
    let v = (n + scale_den - 1).div_euclid(scale_den);
    Some(if neg { -v } else { v })
}

/// The value in whole units, rounded up.
pub fn units(s: &str) -> Option<i128> {
    milli(s).map(|m| (m + 999).div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(units("128Mi"), Some(128 << 20));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("1k"), Some(1000));
        assert_eq!(milli("abc"), None);
        assert_eq!(milli("1Xi"), None);
        assert_eq!(milli(""), None);
    }
}
