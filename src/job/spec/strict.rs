//! JSON read strictly: an object that names a key twice is refused. serde_json
//! keeps the last of duplicate keys without a word, so `{"id":"a","id":"b"}`
//! would run as `b` while its producer, or a log reader, takes it for `a`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Checks `body` for an object with a key twice; the key, if so. Syntax errors
/// are left to the parse that follows.
pub fn duplicate_key(body: &[u8]) -> Option<String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match deserializer.deserialize_any(NoDuplicates) {
        Err(e) => e
            .to_string()
            .strip_prefix(DUPLICATE)
            .and_then(|rest| rest.split(" at line ").next())
            .map(str::to_owned),
        Ok(()) => None,
    }
}

const DUPLICATE: &str = "duplicate key ";

/// A field that must be a JSON object and is not, with the rule. serde reads a
/// struct from an array too (`"resources": [4096]` would be a memory limit by
/// position), which no producer means.
pub fn misshapen(job: &serde_json::Value) -> Option<(String, String)> {
    let must_be_object = |value: &serde_json::Value| !value.is_object();
    if job.get("resources").is_some_and(must_be_object) {
        return Some(("resources".into(), "must be an object".into()));
    }
    let inputs = job.get("inputs").and_then(serde_json::Value::as_array)?;
    inputs
        .iter()
        .position(must_be_object)
        .map(|i| (format!("inputs[{i}]"), "must be an object".into()))
}

/// Walks any JSON value, remembering each object's keys.
struct NoDuplicates;

impl<'de> de::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicates)?;
        Ok(NoDuplicates)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                let shown = crate::rules::truncate(&key, 64);
                return Err(de::Error::custom(format!("{DUPLICATE}{shown:?}")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(duplicate_key(b"not json"), None);
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
