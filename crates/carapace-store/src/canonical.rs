//! Canonical JSON: the exact bytes the audit chain hashes.
//!
//! Written by hand rather than by `serde_json::to_string` because the order of a
//! `serde_json::Map` depends on a cargo feature (`preserve_order`) that any crate in the
//! build can turn on, and a hash must not change when someone else's feature does.

use std::fmt::Write as _;

use serde_json::Value;

/// How deeply arrays and objects may nest in a value the store keeps as JSON text.
/// `serde_json` refuses to parse text nested 128 deep, so a deeper value could be written
/// but never read back (and would make the audit log look broken forever).
pub const MAX_JSON_DEPTH: usize = 127;

/// `value` as canonical JSON: object keys sorted bytewise, no whitespace, strings escaped
/// exactly as `serde_json` escapes them, numbers as `serde_json` prints them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// True when `value` nests deeper than [`MAX_JSON_DEPTH`]. Recursion stops at the limit.
pub(crate) fn too_deep(value: &Value) -> bool {
    fn exceeds(value: &Value, budget: usize) -> bool {
        match value {
            Value::Array(items) => budget == 0 || items.iter().any(|v| exceeds(v, budget - 1)),
            Value::Object(map) => budget == 0 || map.values().any(|v| exceeds(v, budget - 1)),
            _ => false,
        }
    }
    exceeds(value, MAX_JSON_DEPTH)
}

pub(crate) fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => match n.as_f64() {
            Some(float) if n.is_f64() => write_f64(out, float),
            // Integers print as plain decimal, as serde_json prints them; writing to a
            // String cannot fail.
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Keys in a map are unique, so an unstable sort is deterministic.
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// A float as ECMAScript's `Number.prototype.toString` prints it (the number form of
/// RFC 8785): the shortest digits that round-trip, plain notation for exponents from -6 to
/// 20, otherwise `d.ddde+N`. Written here rather than by serde_json because serde_json's
/// float output has changed between releases (`1e100` became `1e+100`), and a log written
/// by one release must verify under the next.
fn write_f64(out: &mut String, x: f64) {
    if x == 0.0 {
        out.push('0'); // -0 too, as in ECMAScript
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // `{:e}` without a precision gives the shortest round-tripping digits, like `1.2345e-7`.
    let sci = format!("{:e}", x.abs());
    let parsed = sci
        .split_once('e')
        .and_then(|(m, e)| Some((m.replace('.', ""), e.parse().ok()?)));
    let Some((digits, exp)) = parsed else {
        // Not reachable for a finite float; keep Rust's spelling rather than panic.
        out.push_str(&sci);
        return;
    };
    let exp: i32 = exp;
    let k = digits.len() as i32;
    let n = exp + 1; // the value is 0.DIGITS times ten to the n
    let zeros = |out: &mut String, count: i32| out.extend((0..count).map(|_| '0'));
    if k <= n && n <= 21 {
        out.push_str(&digits);
        zeros(out, n - k);
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        zeros(out, -n);
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{}", if n > 0 { '+' } else { '-' }, (n - 1).abs());
    }
}

/// A JSON string literal escaped like `serde_json` does: `"` and `\`, the short escapes
/// `\b \t \n \f \r`, every other control character below 0x20 as `\u00xx` (lowercase hex),
/// and everything else (DEL and all non-ASCII) as is.
fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let short = match byte {
            b'"' => '"',
            b'\\' => '\\',
            0x08 => 'b',
            0x09 => 't',
            0x0a => 'n',
            0x0c => 'f',
            0x0d => 'r',
            0x00..=0x1f => 'u',
            _ => continue,
        };
        // Every byte that needs escaping is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        out.push('\\');
        out.push(short);
        if short == 'u' {
            out.push_str("00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use serde_json::{Map, Value, json};

    use super::*;

    fn check(input: &str, expected: Expect) {
        let value: Value = serde_json::from_str(input).unwrap();
        let canonical = canonical_json(&value);
        expected.assert_eq(&canonical);
        // Canonical text parses back to the same value and is a fixed point.
        // (The value may change kind: the float 1.0 is written `1` and reads back as an
        // integer; the text may not change.)
        let reparsed: Value = serde_json::from_str(&canonical).unwrap();
        assert_eq!(canonical_json(&reparsed), canonical);
    }

    #[test]
    fn scalars() {
        check("null", expect![[r#"null"#]]);
        check("true", expect![[r#"true"#]]);
        check(" false ", expect![[r#"false"#]]);
        check("0", expect![[r#"0"#]]);
        check("-17", expect![[r#"-17"#]]);
        check("18446744073709551615", expect![[r#"18446744073709551615"#]]);
        check("-9223372036854775808", expect![[r#"-9223372036854775808"#]]);
        check("1.5", expect![[r#"1.5"#]]);
        check("1.0", expect![[r#"1"#]]);
        check("-0.0", expect![[r#"0"#]]);
        check("-2.5e-3", expect![[r#"-0.0025"#]]);
        check("1E100", expect![[r#"1e+100"#]]);
        check("1.25e-100", expect![[r#"1.25e-100"#]]);
        check("0.000001", expect![[r#"0.000001"#]]);
        check("0.0000001", expect![[r#"1e-7"#]]);
        check("123456.789", expect![[r#"123456.789"#]]);
        check("1e20", expect![[r#"100000000000000000000"#]]);
        check("1e21", expect![[r#"1e+21"#]]);
        check(
            "1.7976931348623157e308",
            expect![[r#"1.7976931348623157e+308"#]],
        );
        check("5e-324", expect![[r#"5e-324"#]]);
        check("0.1", expect![[r#"0.1"#]]);
    }

    #[test]
    fn floats_are_a_fixed_point_of_parse_and_write() {
        // Every canonical float must read back as the same float, or a log holding one
        // would fail verification. xorshift over raw bit patterns reaches every exponent.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if !x.is_finite() {
                continue;
            }
            let mut text = String::new();
            write_f64(&mut text, x);
            let back: f64 = match serde_json::from_str::<Value>(&text).unwrap() {
                Value::Number(n) => n.as_f64().unwrap(),
                other => panic!("{text} read back as {other}"),
            };
            let mut again = String::new();
            write_f64(&mut again, back);
            assert_eq!(again, text, "bits {state:#x}");
            assert!(back == x, "{text} read back as {back:e}, not {x:e}");
        }
    }

    #[test]
    fn strings_escape_like_serde_json() {
        check(r#""plain""#, expect![[r#""plain""#]]);
        check(
            r#""quote \" backslash \\ slash \/""#,
            expect![[r#""quote \" backslash \\ slash /""#]],
        );
        check(
            r#""\u0000\u0001\b\t\n\u000b\f\r\u001f \u0020""#,
            expect![[r#""\u0000\u0001\b\t\n\u000b\f\r\u001f  ""#]],
        );
        // Non-ASCII is written as is (U+2028 and DEL too; see the exhaustive test below).
        check(r#""h\u00e9llo \ud83d\ude00""#, expect![[r#""héllo 😀""#]]);
    }

    #[test]
    fn every_ascii_and_some_unicode_escapes_exactly_as_serde_json() {
        let mut chars: Vec<char> = (0u8..=0x7f).map(char::from).collect();
        chars.extend([
            '\u{80}', '\u{a0}', 'é', '\u{2028}', '\u{2029}', '\u{feff}', '😀',
        ]);
        for c in chars {
            let s = format!("a{c}b{c}");
            let mut ours = String::new();
            write_string(&mut ours, &s);
            assert_eq!(ours, serde_json::to_string(&s).unwrap(), "char {:?}", c);
        }
    }

    #[test]
    fn objects_sort_keys_bytewise_at_every_level() {
        check(
            r#"{ "b": 1, "a": [ {"z": null, "y": [] }, {} ], "B": {"é": 1, "e": 2, "": 3}, "aa": "x" }"#,
            expect![[r#"{"B":{"":3,"e":2,"é":1},"a":[{"y":[],"z":null},{}],"aa":"x","b":1}"#]],
        );
        // Bytewise, not by UTF-16 code unit: U+FFFF (EF BF BF) sorts before U+10000 (F0 ...),
        // although its UTF-16 unit 0xFFFF sorts after the surrogate 0xD800.
        check(r#"{"😀": 1, "\uffff": 2}"#, expect![[r#"{"￿":2,"😀":1}"#]]);
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut first = Map::new();
        first.insert("zeta".into(), json!(1));
        first.insert("alpha".into(), json!({"y": 2, "x": 1}));
        let mut second = Map::new();
        second.insert("alpha".into(), json!({"x": 1, "y": 2}));
        second.insert("zeta".into(), json!(1));
        let (first, second) = (Value::Object(first), Value::Object(second));
        assert_eq!(canonical_json(&first), canonical_json(&second));
        expect![[r#"{"alpha":{"x":1,"y":2},"zeta":1}"#]].assert_eq(&canonical_json(&first));
    }

    #[test]
    fn depth_limit_matches_what_serde_json_reads_back() {
        let nested = |depth: usize| {
            let mut v = json!(1);
            for i in 0..depth {
                v = if i % 2 == 0 {
                    json!([v])
                } else {
                    json!({ "k": v })
                };
            }
            v
        };
        let deepest = nested(MAX_JSON_DEPTH);
        assert!(!too_deep(&deepest));
        let text = canonical_json(&deepest);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), deepest);

        let too = nested(MAX_JSON_DEPTH + 1);
        assert!(too_deep(&too));
        assert!(serde_json::from_str::<Value>(&canonical_json(&too)).is_err());
        assert!(!too_deep(&json!("scalar")));
    }
}
