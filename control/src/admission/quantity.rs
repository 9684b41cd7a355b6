//! Resource quantities (`500m`, `128Mi`, `1.5`, `2e3`), exact, as Kubernetes'
//! `resource.Quantity`: parsed to an integer count of nano-units, printed back in the
//! canonical form with the format (binary or decimal suffix) of the original.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    BinarySi,
    DecimalSi,
}

/// An exact quantity in units of 10⁻⁹. Equal quantities are equal whatever their
/// format (`1Gi` == `1024Mi`).
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    pub format: Format,
}

const NANO: i128 = 1_000_000_000;

/// The sum, in the format of the first non-zero operand (a running total that starts at
/// zero takes the format of what is added, so `64Mi` stays binary).
impl std::ops::Add for Quantity {
    type Output = Quantity;

    fn add(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        }
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;

    fn sub(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: self.format,
        }
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Quantity {
    pub fn zero() -> Quantity {
        Quantity {
            nanos: 0,
            format: Format::DecimalSi,
        }
    }

    pub fn from_units(n: i64) -> Quantity {
        Quantity {
            nanos: n as i128 * NANO,
            format: Format::DecimalSi,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The value in milli-units, rounded up (as `MilliValue`).
    pub fn milli(&self) -> i128 {
        (self.nanos + 999_999).div_euclid(1_000_000)
    }

    /// Parses a quantity; `Err` carries Kubernetes' message.
    pub fn parse(s: &str) -> Result<Quantity, String> {
        const BAD: &str = "quantities must match the regular expression \
                           '^([+-]?[0-9.]+)([eEinumkKMGTPE]*[-+]?[0-9]*)$'";
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let (negative, digits) = match number.as_bytes().first() {
            Some(b'-') => (true, &number[1..]),
            Some(b'+') => (false, &number[1..]),
            _ => (false, number),
        };
        if digits.is_empty()
            || digits.matches('.').count() > 1
            || !digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            || digits == "."
        {
            return Err(BAD.into());
        }
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        // Mantissa as an integer scaled by 10^-frac.len().
        let mut mantissa: i128 = 0;
        for c in whole.chars().chain(frac.chars()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(c as u8 - b'0')))
                .ok_or("quantity too large")?;
        }
        let mut scale_exp10: i32 = -(frac.len() as i32);
        let mut multiplier: i128 = 1;
        let format;
        match suffix {
            "" => format = Format::DecimalSi,
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                format = Format::BinarySi;
                let power = "KMGTPE".find(&suffix[..1]).unwrap_or(0) as u32 + 1;
                multiplier = 1i128 << (10 * power);
            }
            "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => {
                format = Format::DecimalSi;
                scale_exp10 += match suffix {
                    "n" => -9,
                    "u" => -6,
                    "m" => -3,
                    "k" => 3,
                    "M" => 6,
                    "G" => 9,
                    "T" => 12,
                    "P" => 15,
                    _ => 18,
                };
            }
            _ if suffix.starts_with(['e', 'E']) => {
                format = Format::DecimalSi;
                let exp: i32 = suffix[1..].parse().map_err(|_| BAD.to_string())?;
                if !(-40..=40).contains(&exp) {
                    return Err("quantity exponent out of range".into());
                }
                scale_exp10 += exp;
            }
            _ => return Err(BAD.into()),
        }
        // nanos = mantissa * multiplier * 10^(scale_exp10 + 9), rounded up like Kubernetes
        // rounds sub-nano precision.
        let exp = scale_exp10 + 9;
        let mut nanos = mantissa
            .checked_mul(multiplier)
            .ok_or("quantity too large")?;
        if exp >= 0 {
            for _ in 0..exp {
                nanos = nanos.checked_mul(10).ok_or("quantity too large")?;
            }
        } else {
            let div = 10i128
                .checked_pow((-exp) as u32)
                .ok_or("quantity too small")?;
            nanos = (nanos + div - 1) / div;
        }
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// Parses a JSON quantity (a string or a number).
    pub fn from_json(v: &Value) -> Result<Quantity, String> {
        match v {
            Value::String(s) => Quantity::parse(s),
            Value::Number(n) => Quantity::parse(&n.to_string()),
            _ => Err("quantities must be strings or numbers".into()),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n == 0 {
            return f.write_str("0");
        }
        if self.format == Format::BinarySi && n % NANO == 0 {
            let units = n / NANO;
            for (power, suffix) in [
                (6, "Ei"),
                (5, "Pi"),
                (4, "Ti"),
                (3, "Gi"),
                (2, "Mi"),
                (1, "Ki"),
            ] {
                let m = 1i128 << (10 * power);
                if units % m == 0 {
                    return write!(f, "{}{suffix}", units / m);
                }
            }
            if units.abs() < 1024 {
                return write!(f, "{units}");
            }
        }
        for (exp, suffix) in [
            (27, "E"),
            (24, "P"),
            (21, "T"),
            (18, "G"),
            (15, "M"),
            (12, "k"),
            (9, ""),
            (6, "m"),
            (3, "u"),
            (0, "n"),
        ] {
            let m = 10i128.pow(exp);
            if n % m == 0 {
                return write!(f, "{}{suffix}", n / m);
            }
        }
        write!(f, "{n}n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_canonically() {
        assert_eq!(q("500m").to_string(), "500m");
        assert_eq!(q("0.5").to_string(), "500m");
        assert_eq!(q("1").to_string(), "1");
        assert_eq!(q("128Mi").to_string(), "128Mi");
        assert_eq!(q("1024Mi").to_string(), "1Gi");
        assert_eq!(q("1G").to_string(), "1G");
        assert_eq!(q("1000").to_string(), "1k");
        assert_eq!(q("2e3").to_string(), "2k");
        assert_eq!(q("1.5Gi").to_string(), "1536Mi");
        assert_eq!(q("-1").to_string(), "-1");
        assert!(q("1") > q("999m"));
        assert_eq!(
            q("1Ki"),
            Quantity::parse("1024")
                .map(|x| Quantity {
                    format: Format::BinarySi,
                    ..x
                })
                .unwrap()
        );
        assert_eq!(q("100m").milli(), 100);
        assert_eq!((q("1") + q("500m")).to_string(), "1500m");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1x", "1..2", "m", "1Mb", "--1"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }
}
