//! CPU and memory amounts as people write and read them, the same in every
//! tool: CPU in cores (`4`, `0.5`) or millicores (`500m`), memory in bytes
//! with a binary (`16GiB`, `512Mi`) or decimal (`16G`, `500M`) suffix.
//! The numbers behind them are integers: thousandths of a core, bytes.

/// Parses a CPU amount into thousandths of a core: `4`, `2.5`, `500m`.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("'{text}' is not a CPU amount; give cores (4, 0.5) or millicores (500m)");
    if let Some(milli) = t.strip_suffix('m') {
        return milli.parse::<u64>().map_err(|_| bad());
    }
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 3 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else if frac.bytes().all(|b| b.is_ascii_digit()) {
        format!("{frac:0<3}").parse().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    whole
        .checked_mul(1000)
        .and_then(|m| m.checked_add(frac))
        .ok_or_else(bad)
}

/// Parses a memory amount into bytes: `16GiB`, `512Mi`, `2G`, `1048576`.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!("'{text}' is not a memory amount; give bytes with a unit, e.g. 16GiB, 512MiB or 2G")
    };
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Thousandths of a core for people: `4`, `2.5`, `250m`.
pub fn cpu(millicores: u64) -> String {
    match millicores {
        m if m.is_multiple_of(1000) => (m / 1000).to_string(),
        m if m.is_multiple_of(100) => format!("{}.{}", m / 1000, (m % 1000) / 100),
        m => format!("{m}m"),
    }
}

/// Bytes for people, in the largest binary unit that keeps one decimal
/// honest: `16GiB`, `1.5GiB`, `512MiB`, `100B`.
pub fn memory(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let size = 1u64 << shift;
        if bytes >= size {
            let tenths = (u128::from(bytes) * 10 / u128::from(size)) as u64;
            return if tenths.is_multiple_of(10) {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts_parse_in_cores_or_millicores() {
        assert_eq!(parse_cpu("4"), Ok(4000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2.25"), Ok(2250));
        assert_eq!(parse_cpu("500m"), Ok(500));
        for bad in ["", "-1", "1.2345", "four", "1e3", "."] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_amounts_parse_with_binary_or_decimal_units() {
        assert_eq!(parse_memory("16GiB"), Ok(16 << 30));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1048576"), Ok(1 << 20));
        for bad in ["", "GiB", "-1GiB", "16 gigabytes", "99999999999TiB"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_print_for_people() {
        assert_eq!(cpu(4000), "4");
        assert_eq!(cpu(2500), "2.5");
        assert_eq!(cpu(250), "250m");
        assert_eq!(memory(16 << 30), "16GiB");
        assert_eq!(memory(3 << 29), "1.5GiB");
        assert_eq!(memory(100), "100B");
    }
}
