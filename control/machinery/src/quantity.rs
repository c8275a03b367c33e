//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `2G`, `1e3`) as integers, so the
//! scheduler adds and compares them exactly.

/// A quantity in milli-units (`cpu: 100m` = 100, `memory: 1Ki` = `1_024_000`).
///
/// Milli-units for everything keeps one code path; memory in bytes times 1000 still fits an
/// `i64` up to 9 PB.
#[must_use]
pub fn parse_milli(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (mantissa, exponent) = if let Some(rest) = suffix.strip_prefix(['e', 'E']) {
        (number, rest.parse::<i32>().ok()?)
    } else {
        (number, 0)
    };
    // Nano- and micro-units (what the metrics API writes CPU usage in) divide instead.
    let divisor: i128 = match suffix {
        "n" => 1_000_000,
        "u" => 1000,
        _ => 1,
    };
    let multiplier_milli: i128 = match suffix {
        "" => 1000,
        "m" | "n" | "u" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "T" => 1000 * 1_000_000_000_000,
        "P" => 1000 * 1_000_000_000_000_000,
        "Ki" => 1000 << 10,
        "Mi" => 1000 << 20,
        "Gi" => 1000 << 30,
        "Ti" => 1000 << 40,
        "Pi" => 1000 << 50,
        _ if suffix.starts_with(['e', 'E']) => 10_i128
            .checked_pow(u32::try_from(exponent).ok()?)?
            .checked_mul(1000)?,
        _ => return None,
    };
    // Decimal mantissa as an exact fraction: digits / 10^decimals.
    let negative = mantissa.starts_with('-');
    let digits = mantissa.trim_start_matches(['-', '+']);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = 10_i128
        .checked_pow(u32::try_from(fraction.len()).ok()?)?
        .checked_mul(divisor)?;
    let value: i128 = format!("{whole}{fraction}").parse().ok()?;
    // Round up like the apiserver does for sub-milli precision.
    let milli = value
        .checked_mul(multiplier_milli)?
        .checked_add(scale - 1)?
        / scale;
    let milli = if negative { -milli } else { milli };
    i64::try_from(milli).ok()
}

/// A milli-unit value as Go's `resource.NewMilliQuantity(v, DecimalSI)` prints it: the
/// canonical form, which [`parse_milli`] reads back to the same value.
#[must_use]
pub fn format_milli(milli: i64) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut n = milli / 1000;
    if n == 0 {
        return "0".into();
    }
    for suffix in ["", "k", "M", "G", "T"] {
        if n % 1000 != 0 {
            return format!("{n}{suffix}");
        }
        n /= 1000;
    }
    format!("{n}P")
}

#[cfg(test)]
mod tests {
    use super::{format_milli, parse_milli};

    #[test]
    fn cpu_and_memory_forms_parse_exactly() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("0.5Gi"), Some(512 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("250000000n"), Some(250));
        assert_eq!(parse_milli("1500u"), Some(2));
        assert_eq!(parse_milli("x"), None);
        assert_eq!(parse_milli(""), None);
    }

    #[test]
    fn quantities_too_large_for_the_arithmetic_are_refused_not_a_panic() {
        assert_eq!(parse_milli("1e38"), None);
        assert_eq!(parse_milli(&"9".repeat(38)), None);
        assert_eq!(parse_milli(&format!("0.{}n", "1".repeat(37))), None);
        assert_eq!(parse_milli(&format!("{}Pi", "9".repeat(30))), None);
    }

    #[test]
    fn milli_values_print_as_go_quantities() {
        assert_eq!(format_milli(250), "250m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(12_000_000_000), "12M");
        assert_eq!(format_milli(0), "0");
        assert_eq!(format_milli(-1500), "-1500m");
    }
}
