//! DECIMAL(p,s) → Postgres numeric, binary format: ndigits, weight, sign, dscale as int16, then
//! base-10000 digits as int16 (see numeric_send in Postgres' numeric.c).

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;

/// Appends the binary numeric for the unscaled `value` with `scale` decimal places.
pub fn write_numeric(value: i128, scale: u8, out: &mut Vec<u8>) {
    let scale = scale as usize;
    let digits = value.unsigned_abs().to_string();
    // Left-pad so there is at least one integer digit, then split at the decimal point.
    let padded = if digits.len() <= scale {
        format!("{}{}", "0".repeat(scale + 1 - digits.len()), digits)
    } else {
        digits
    };
    let (int_str, frac_str) = padded.split_at(padded.len() - scale);
    // Align both parts to groups of four decimal digits.
    let int_pad = (4 - int_str.len() % 4) % 4;
    let frac_pad = (4 - frac_str.len() % 4) % 4;
    let int_aligned = format!("{}{}", "0".repeat(int_pad), int_str);
    let frac_aligned = format!("{}{}", frac_str, "0".repeat(frac_pad));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse::<i16>().unwrap())
            .collect()
    };
    let int_groups = group(&int_aligned);
    let frac_groups = group(&frac_aligned);
    let mut groups: Vec<i16> = int_groups
        .iter()
        .chain(frac_groups.iter())
        .copied()
        .collect();
    let mut weight = int_groups.len() as i16 - 1;
    // Strip leading zero groups (each moves the weight down) and trailing zero groups.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    if lead == groups.len() {
        // Zero: no digits.
        push_header(out, 0, 0, NUMERIC_POS, scale as u16);
        return;
    }
    groups.drain(..lead);
    weight -= lead as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let sign = if value < 0 { NUMERIC_NEG } else { NUMERIC_POS };
    push_header(out, groups.len() as i16, weight, sign, scale as u16);
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

fn push_header(out: &mut Vec<u8>, ndigits: i16, weight: i16, sign: u16, dscale: u16) {
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
}

/// The decimal as text, for JSON and messages: `-12.30` for (-1230, 2).
pub fn decimal_text(value: i128, scale: u8) -> String {
    let scale = scale as usize;
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= scale {
        format!("{}{}", "0".repeat(scale + 1 - digits.len()), digits)
    } else {
        digits
    };
    let (i, f) = padded.split_at(padded.len() - scale);
    format!("{sign}{i}.{f}")
}
