//! The jobs and the nodes as a binary snapshot holds them: one MessagePack
//! blob each, whose records are positional (a struct is the list of its
//! fields' values, in declaration order, with no field names).
//!
//! With field names a job's record was about 650 bytes, most of them the
//! names of its fields and of its spec's, and a node of 8 GPUs about 1,400;
//! at 10,000 nodes and 50,000 final jobs kept they were nine tenths of a
//! snapshot, and writing the names was much of its encoding.
//!
//! Positional records read back as long as fields are only ever added at
//! the end of a struct and with a serde default (the derive fills in a
//! missing trailing field from its default); a field removed, moved or
//! added elsewhere needs a new snapshot format (`raft::snapshot`). The
//! fixtures of each format there catch a record that no longer reads.
//!
//! A human-readable encoding (JSON: format 1, and the state hash) keeps
//! the records with their field names, and both forms are read.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::Error as _;
use serde::{Deserializer, Serialize, Serializer};

pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        return value.serialize(s);
    }
    let bytes = rmp_serde::to_vec(value).map_err(S::Error::custom)?;
    s.serialize_bytes(&bytes)
}

pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Packed(PhantomData))
}

/// Reads either form: a blob of positional records, or the map with
/// field names that earlier formats and JSON hold.
struct Packed<T>(PhantomData<T>);

impl<'de, T: DeserializeOwned> Visitor<'de> for Packed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of records, or the MessagePack bytes of one")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<T, E> {
        rmp_serde::from_slice(bytes).map_err(|e| E::custom(format!("packed records: {e}")))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        a: u32,
        b: String,
    }

    /// `Old` with a field added at the end, as the rule above allows.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        a: u32,
        b: String,
        #[serde(default)]
        c: Option<u64>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
    struct Holder<T> {
        #[serde(with = "super")]
        records: BTreeMap<u64, T>,
    }

    /// The holder as earlier formats wrote it: records with field names.
    #[derive(Serialize)]
    struct Plain {
        records: BTreeMap<u64, Old>,
    }

    fn named() -> Vec<u8> {
        rmp_serde::to_vec_named(&Plain {
            records: old().records,
        })
        .unwrap()
    }

    fn old() -> Holder<Old> {
        let records = BTreeMap::from([(
            7,
            Old {
                a: 1,
                b: "x".into(),
            },
        )]);
        Holder { records }
    }

    #[test]
    fn records_are_packed_in_messagepack_and_named_in_json() {
        let packed = rmp_serde::to_vec_named(&old()).unwrap();
        let named = named();
        assert!(packed.len() < named.len(), "{packed:?} against {named:?}");
        assert_eq!(
            rmp_serde::from_slice::<Holder<Old>>(&packed).unwrap(),
            old()
        );
        let json = serde_json::to_string(&old()).unwrap();
        assert_eq!(json, r#"{"records":{"7":{"a":1,"b":"x"}}}"#);
        assert_eq!(serde_json::from_str::<Holder<Old>>(&json).unwrap(), old());
    }

    #[test]
    fn named_records_of_earlier_formats_still_read() {
        assert_eq!(
            rmp_serde::from_slice::<Holder<Old>>(&named()).unwrap(),
            old()
        );
    }

    #[test]
    fn a_field_added_at_the_end_reads_as_its_default() {
        let packed = rmp_serde::to_vec_named(&old()).unwrap();
        let new = rmp_serde::from_slice::<Holder<New>>(&packed).unwrap();
        let want = New {
            a: 1,
            b: "x".into(),
            c: None,
        };
        assert_eq!(new.records[&7], want);
    }

    #[test]
    fn a_damaged_blob_is_refused() {
        let mut packed = rmp_serde::to_vec_named(&old()).unwrap();
        let last = packed.len() - 1;
        packed[last] = 0xc1; // never used in MessagePack
        let err = rmp_serde::from_slice::<Holder<Old>>(&packed).unwrap_err();
        assert!(err.to_string().contains("packed records"), "{err}");
    }
}
