//! JSON read strictly: an object that names a key twice is refused. serde_json
//! keeps the last of duplicate keys without a word, so `{"id":"a","id":"b"}`
//! would run as `b` while its producer, or a log reader, takes it for `a`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not a JSON value we take.
#[derive(Debug)]
pub enum Malformed {
    /// An object names this key (quoted) twice.
    DuplicateKey(String),
    /// Not JSON at all, or nested past serde_json's limit.
    Syntax(serde_json::Error),
}

/// `body` as one JSON value, in one pass, refusing an object that names a key
/// twice.
pub fn parse(body: &[u8]) -> Result<Value, Malformed> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = deserializer
        .deserialize_any(Strict)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| {
            let text = e.to_string();
            match text.strip_prefix(DUPLICATE) {
                Some(rest) => Malformed::DuplicateKey(
                    rest.split(" at line ").next().unwrap_or(rest).to_owned(),
                ),
                None => Malformed::Syntax(e),
            }
        })?;
    Ok(value)
}

const DUPLICATE: &str = "duplicate key ";

/// A field that must be a JSON object and is not, with the rule. serde reads a
/// struct from an array too (`"resources": [4096]` would be a memory limit by
/// position), which no producer means.
pub fn misshapen(job: &serde_json::Value) -> Option<(String, String)> {
    let must_be_object = |value: &serde_json::Value| !value.is_object();
    for object in ["resources", "image_build"] {
        if job.get(object).is_some_and(must_be_object) {
            return Some((object.into(), "must be an object".into()));
        }
    }
    // serde reads a struct from an array too, by position: a list of values
    // where an object belongs must not pass as one.
    for list in ["inputs", "services"] {
        let Some(items) = job.get(list).and_then(serde_json::Value::as_array) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            if must_be_object(item) {
                return Some((format!("{list}[{i}]"), "must be an object".into()));
            }
            for inner in ["resources", "ready"] {
                if list == "services" && item.get(inner).is_some_and(must_be_object) {
                    return Some((format!("{list}[{i}].{inner}"), "must be an object".into()));
                }
            }
        }
    }
    None
}

/// Builds any JSON value, refusing a key an object already has.
struct Strict;

/// A value read by [`Strict`].
struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Strict).map(StrictValue)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown = crate::rules::truncate(&key, 64);
                return Err(de::Error::custom(format!("{DUPLICATE}{shown:?}")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate_key(body: &[u8]) -> Option<String> {
        match parse(body) {
            Err(Malformed::DuplicateKey(key)) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn a_key_named_twice_is_found_at_any_depth() {
        assert_eq!(
            duplicate_key(br#"{"id":"a","id":"b"}"#).as_deref(),
            Some("\"id\"")
        );
        assert_eq!(
            duplicate_key(br#"{"env":{"A":"1","A":"2"}}"#).as_deref(),
            Some("\"A\"")
        );
        assert_eq!(
            duplicate_key(br#"{"a":[{"b":1,"b":2}]}"#).as_deref(),
            Some("\"b\"")
        );
        assert_eq!(duplicate_key(br#"{"a":1,"b":{"a":2}}"#), None);
        assert!(matches!(parse(b"not json"), Err(Malformed::Syntax(_))));
        assert!(matches!(parse(b"{} trailing"), Err(Malformed::Syntax(_))));
    }

    #[test]
    fn what_it_reads_is_what_serde_json_reads() {
        let body = br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":18446744073709551615}"#;
        let ours = parse(body).unwrap();
        let theirs: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn objects_given_as_arrays_are_refused() {
        let job =
            |extra: &str| serde_json::from_str(&format!(r#"{{"version":1{extra}}}"#)).unwrap();
        assert_eq!(
            misshapen(&job(r#","resources":[4096]"#)),
            Some(("resources".into(), "must be an object".into()))
        );
        assert_eq!(
            misshapen(&job(r#","inputs":[{"source":"s3://b/k"},["s3://b/k"]]"#)),
            Some(("inputs[1]".into(), "must be an object".into()))
        );
        assert_eq!(misshapen(&job(r#","resources":{"cpus":1}"#)), None);
    }
}
