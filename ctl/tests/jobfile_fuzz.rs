//! Hostile job files: deep nesting, huge strings, NUL bytes, negative and
//! overflowing numbers, arbitrary text. Parsing never panics; what it
//! accepts converts to a spec that passes its own checks.

use edupoolctl::jobfile::{parse, JobFileFormat};
use proptest::prelude::*;

const FORMATS: [JobFileFormat; 2] = [JobFileFormat::Yaml, JobFileFormat::Toml];

fn accepted_files_convert(text: &str) {
    for format in FORMATS {
        if let Ok(file) = parse(text, format) {
            // A file that parsed and validated always converts.
            file.to_spec().expect("a validated job file converts");
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [64, 1_000, 20_000] {
        let yaml = format!(
            "command: {}x{}\ngpus: 1\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse(&yaml, JobFileFormat::Yaml).is_err());
        let yaml_maps = format!("env: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth));
        assert!(parse(&yaml_maps, JobFileFormat::Yaml).is_err());
        let toml = format!(
            "gpus = 1\ncommand = {}\"x\"{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse(&toml, JobFileFormat::Toml).is_err());
        let toml_tables = format!("env = {}1{}\n", "{a = ".repeat(depth), "}".repeat(depth));
        assert!(parse(&toml_tables, JobFileFormat::Toml).is_err());
    }
}

#[test]
fn numbers_out_of_range_are_refused() {
    for gpus in ["-1", "4294967296", "18446744073709551616", "1e309", "NaN"] {
        let yaml = format!("command: [x]\ngpus: {gpus}\n");
        assert!(parse(&yaml, JobFileFormat::Yaml).is_err(), "{gpus}");
        let toml = format!("command = [\"x\"]\ngpus = {gpus}\n");
        assert!(parse(&toml, JobFileFormat::Toml).is_err(), "{gpus}");
    }
}

#[test]
fn huge_strings_and_nul_bytes_do_not_crash() {
    let huge = "a".repeat(4 << 20);
    accepted_files_convert(&format!("command: [{huge}]\ngpus: 1\n"));
    accepted_files_convert(&format!("name: {huge}\ncommand: [x]\ngpus: 1\n"));
    accepted_files_convert("command: [\"a\\0b\"]\ngpus: 1\n");
    accepted_files_convert("command = [\"a\\u0000b\"]\ngpus = 1\nenv = { \"K\\u0000\" = \"v\" }\n");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        accepted_files_convert(&text);
    }

    #[test]
    fn job_shaped_text_with_hostile_values_never_panics(
        name in "[\\x00-\\x7f]{0,300}",
        arg in "\\PC{0,200}",
        gpus in any::<i128>(),
        walltime in "[0-9a-z ]{0,12}",
        key in "[\\x00-\\x7f]{0,40}",
        value in "\\PC{0,40}",
    ) {
        let yaml = format!(
            "name: {name:?}\ncommand: [{arg:?}]\ngpus: {gpus}\nwalltime: {walltime:?}\nenv:\n  {key:?}: {value:?}\n"
        );
        accepted_files_convert(&yaml);
        let toml = format!(
            "name = {name:?}\ncommand = [{arg:?}]\ngpus = {gpus}\nwalltime = {walltime:?}\n[env]\n{key:?} = {value:?}\n"
        );
        accepted_files_convert(&toml);
    }
}
