//! The ledger's runs as the state is serialized (snapshots and backups):
//! one table whose rows are positional and whose strings (tenants, nodes,
//! lenders, GPU models and classes) are written once each and referred to
//! by number. A list of records with field names, as formats 1 and 2 of a
//! snapshot hold them, spent half of a large snapshot's encoding on the
//! runs' field names and repeated strings (250,000 runs kept at 10,000
//! nodes); it still reads.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::billing::Charge;
use super::{LedgerEntry, RunEnd};
use crate::state::types::{Capacity, JobClass, JobId, Millis};

type Runs = VecDeque<Arc<LedgerEntry>>;

/// A run's charge: gpu, energy, free, equity, lending credit and
/// unpriced GPU time, in [`Charge`]'s order.
type ChargeRow = (u64, u64, u64, u64, u64, u64);

/// One run, its columns in [`LedgerEntry`]'s order; strings are indexes
/// into the table's names. Positional, so a new field of a run needs a
/// new column here and a new snapshot format (`raft::snapshot`), not
/// only a serde default.
#[derive(Serialize, Deserialize)]
struct Row(
    u64,         // seq
    u32,         // tenant
    JobId,       // job
    u32,         // run
    u32,         // task
    u32,         // node
    Option<u32>, // lender
    JobClass,    // class
    u32,         // gpu_model
    u32,         // gpu_class
    u32,         // gpus
    u32,         // milli_per_gpu
    Millis,      // start
    Millis,      // end
    u64,         // gpu_milli_ms
    Option<u64>, // energy_mj
    Capacity,    // capacity
    RunEnd,      // ended
    ChargeRow,   // charge
);

/// Each distinct string once, numbered in order of first use. A fast
/// hash: every string of every run is looked up once per snapshot.
#[derive(Default)]
struct Names<'a> {
    list: Vec<&'a str>,
    index: HashMap<&'a str, u32, foldhash::fast::RandomState>,
}

impl<'a> Names<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        let next = self.list.len() as u32;
        match self.index.entry(s) {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(v) => {
                v.insert(next);
                self.list.push(s);
                next
            }
        }
    }

    fn row(&mut self, e: &'a LedgerEntry) -> Row {
        let c = e.charge;
        Row(
            e.seq,
            self.id(&e.tenant),
            e.job,
            e.run,
            e.task,
            self.id(&e.node),
            e.lender.as_deref().map(|l| self.id(l)),
            e.class,
            self.id(&e.gpu_model),
            self.id(&e.gpu_class),
            e.gpus,
            e.milli_per_gpu,
            e.start,
            e.end,
            e.gpu_milli_ms,
            e.energy_mj,
            e.capacity,
            e.ended,
            (
                c.gpu,
                c.energy,
                c.free,
                c.equity,
                c.lending_credit,
                c.unpriced_gpu_milli_ms,
            ),
        )
    }
}

/// The rows, made one at a time as they are written; the names they use
/// are collected on the way and written after them.
struct RowsOut<'a, 'n> {
    runs: &'a Runs,
    names: &'n RefCell<Names<'a>>,
}

impl Serialize for RowsOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.runs.iter().map(|e| self.names.borrow_mut().row(e)))
    }
}

pub fn serialize<S: Serializer>(runs: &Runs, s: S) -> Result<S::Ok, S::Error> {
    let names = RefCell::new(Names::default());
    let mut table = s.serialize_struct("RunTable", 2)?;
    table.serialize_field(
        "rows",
        &RowsOut {
            runs,
            names: &names,
        },
    )?;
    table.serialize_field("names", &names.borrow().list)?;
    table.end()
}

#[derive(Deserialize)]
struct TableIn {
    names: Vec<String>,
    rows: Vec<Row>,
}

impl TableIn {
    fn into_runs(self) -> Result<Runs, String> {
        let name = |i: u32| {
            self.names.get(i as usize).cloned().ok_or_else(|| {
                format!(
                    "the ledger's run table refers to name {i}, but has only {}",
                    self.names.len()
                )
            })
        };
        let mut runs = VecDeque::with_capacity(self.rows.len());
        for r in &self.rows {
            let (gpu, energy, free, equity, lending_credit, unpriced_gpu_milli_ms) = r.18;
            runs.push_back(Arc::new(LedgerEntry {
                seq: r.0,
                tenant: name(r.1)?,
                job: r.2,
                run: r.3,
                task: r.4,
                node: name(r.5)?,
                lender: r.6.map(name).transpose()?,
                class: r.7,
                gpu_model: name(r.8)?,
                gpu_class: name(r.9)?,
                gpus: r.10,
                milli_per_gpu: r.11,
                start: r.12,
                end: r.13,
                gpu_milli_ms: r.14,
                energy_mj: r.15,
                capacity: r.16,
                ended: r.17,
                charge: Charge {
                    gpu,
                    energy,
                    free,
                    equity,
                    lending_credit,
                    unpriced_gpu_milli_ms,
                },
            }));
        }
        Ok(runs)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Runs, D::Error> {
    d.deserialize_any(RunsVisitor)
}

struct RunsVisitor;

impl<'de> Visitor<'de> for RunsVisitor {
    type Value = Runs;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the ledger's runs: a table of names and rows, or a list of records")
    }

    /// Formats 1 and 2: one record per run, with field names.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Runs, A::Error> {
        let mut runs = VecDeque::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(e) = seq.next_element::<LedgerEntry>()? {
            runs.push_back(Arc::new(e));
        }
        Ok(runs)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Runs, A::Error> {
        TableIn::deserialize(de::value::MapAccessDeserializer::new(map))?
            .into_runs()
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        runs: Runs,
    }

    fn run(seq: u64, tenant: &str, node: &str, lender: Option<&str>) -> Arc<LedgerEntry> {
        Arc::new(LedgerEntry {
            seq,
            tenant: tenant.into(),
            job: JobId(seq * 10),
            run: 1,
            task: 0,
            node: node.into(),
            lender: lender.map(Into::into),
            class: JobClass::Training,
            gpu_model: "A100-80GB".into(),
            gpu_class: "A100".into(),
            gpus: 2,
            milli_per_gpu: 1000,
            start: 1_000,
            end: 61_000,
            gpu_milli_ms: 120_000_000,
            energy_mj: seq.is_multiple_of(2).then_some(5_000),
            capacity: Capacity::Borrowed,
            ended: RunEnd::Preempted,
            charge: Charge {
                gpu: 7,
                lending_credit: 3,
                ..Charge::default()
            },
        })
    }

    fn holder() -> Holder {
        Holder {
            runs: VecDeque::from([
                run(1, "zju", "n1", None),
                run(2, "hdu", "n1", Some("zju")),
                run(3, "zju", "n2", None),
            ]),
        }
    }

    #[test]
    fn runs_round_trip_with_each_string_written_once() {
        let h = holder();
        let packed = rmp_serde::to_vec_named(&h).unwrap();
        assert_eq!(rmp_serde::from_slice::<Holder>(&packed).unwrap(), h);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(
            json["runs"]["names"],
            serde_json::json!(["zju", "n1", "A100-80GB", "A100", "hdu", "n2"])
        );
        assert_eq!(serde_json::from_value::<Holder>(json).unwrap(), h);
    }

    #[test]
    fn runs_written_as_records_still_read() {
        let h = holder();
        let records: Vec<&LedgerEntry> = h.runs.iter().map(|r| r.as_ref()).collect();
        let json = serde_json::json!({ "runs": records });
        assert_eq!(serde_json::from_value::<Holder>(json.clone()).unwrap(), h);
        let packed = rmp_serde::to_vec_named(&json).unwrap();
        assert_eq!(rmp_serde::from_slice::<Holder>(&packed).unwrap(), h);
    }

    #[test]
    fn a_row_naming_a_missing_string_is_refused() {
        let mut json = serde_json::to_value(holder()).unwrap();
        json["runs"]["rows"][2][5] = serde_json::json!(17);
        let err = serde_json::from_value::<Holder>(json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the ledger's run table refers to name 17, but has only 6"),
            "{err}"
        );
    }
}
