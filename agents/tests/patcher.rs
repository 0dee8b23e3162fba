//! The `config.php` route patcher against generated files of every form,
//! and against PHP itself: `php -l` must accept every output, and the map
//! PHP computes must be the map the patcher reads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use sdp_agents::routes::patcher::{Change, apply, patch, read};

const KEYS: [&str; 6] = [
    "account",
    "payment",
    "user",
    "legacy-user",
    "wallet_v2",
    "Ümlaut",
];

/// Between any two tokens: blanks, newlines, comments, decoys in comments.
const GAPS: [&str; 11] = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\n\t\t",
    " /* note */ ",
    " // note\n",
    " # note\n",
    "/* $config['_url']['account'] = 'decoy'; */",
    "\n// $config['_url'] = array('account' => 'decoy');\n",
];

fn escape(value: &str, double: bool) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' if !double => out.push_str("\\'"),
            '"' if double => out.push_str("\\\""),
            '$' if double => out.push_str("\\$"),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Spec {
    form: u8,
    opener: u8,
    trailing_comma: bool,
    /// (key, value, key in double quotes, value in double quotes)
    entries: Vec<(String, String, bool, bool)>,
    gaps: Vec<usize>,
}

/// A generated file and where each value's inside is.
struct Generated {
    text: String,
    values: BTreeMap<String, (Range<usize>, bool)>,
}

struct Writer<'a> {
    text: String,
    gaps: std::iter::Cycle<std::slice::Iter<'a, usize>>,
}

impl Writer<'_> {
    fn gap(&mut self) {
        let i = *self.gaps.next().unwrap_or(&0);
        self.text.push_str(GAPS[i % GAPS.len()]);
    }
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    fn string(&mut self, value: &str, double: bool) -> Range<usize> {
        let q = if double { '"' } else { '\'' };
        self.text.push(q);
        let start = self.text.len();
        self.text.push_str(&escape(value, double));
        let end = self.text.len();
        self.text.push(q);
        start..end
    }
    fn url_head(&mut self) {
        self.push("$config");
        self.gap();
        self.push("[");
        self.gap();
        self.push("'_url'");
        self.gap();
        self.push("]");
        self.gap();
    }
}

impl Spec {
    fn generate(&self) -> Generated {
        let gaps = if self.gaps.is_empty() {
            &[0][..]
        } else {
            &self.gaps[..]
        };
        let mut w = Writer {
            text: String::new(),
            gaps: gaps.iter().cycle(),
        };
        let mut values = BTreeMap::new();
        w.push("<?php\ndefined('BASEPATH') OR exit('No direct script access allowed');\n");
        w.push("/* $config['_url'] = array('account' => 'decoy'); */\n");
        w.push("$s = '$config[\\'_url\\'] = 1';\n$config['base_url'] = '';\n");
        // A file of per-service lines with no service has no map at all.
        let form = if self.entries.is_empty() {
            0
        } else {
            self.form
        };
        let split = match form {
            0 => self.entries.len(),
            1 => 0,
            _ => self.entries.len() / 2,
        };
        if form != 1 {
            w.url_head();
            w.push("=");
            w.gap();
            let close = match self.opener {
                0 => {
                    w.push("array");
                    w.gap();
                    w.push("(");
                    ")"
                }
                1 => {
                    w.push("ARRAY(");
                    ")"
                }
                _ => {
                    w.push("[");
                    "]"
                }
            };
            w.gap();
            for (i, (k, v, kd, vd)) in self.entries[..split].iter().enumerate() {
                if i > 0 {
                    w.push(",");
                    w.gap();
                }
                w.string(k, *kd);
                w.gap();
                w.push("=>");
                w.gap();
                let r = w.string(v, *vd);
                values.insert(k.clone(), (r, *vd));
                w.gap();
            }
            if self.trailing_comma && split > 0 {
                w.push(",");
                w.gap();
            }
            w.push(close);
            w.gap();
            w.push(";\n");
        }
        for (k, v, kd, vd) in &self.entries[split..] {
            w.url_head();
            w.push("[");
            w.gap();
            w.string(k, *kd);
            w.gap();
            w.push("]");
            w.gap();
            w.push("=");
            w.gap();
            let r = w.string(v, *vd);
            values.insert(k.clone(), (r, *vd));
            w.gap();
            w.push(";\n");
        }
        w.push("$config['proxy_timeout'] = 30;\n");
        Generated {
            text: w.text,
            values,
        }
    }

    fn map(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|(k, v, _, _)| (k.clone(), v.clone()))
            .collect()
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn url() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"[a-zA-Z0-9:/._?=&%$'"\\ {}-]{0,24}"#).unwrap()
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..3,
        0u8..3,
        any::<bool>(),
        proptest::sample::subsequence(KEYS.to_vec(), 0..=KEYS.len()),
        proptest::collection::vec((url(), any::<bool>(), any::<bool>()), KEYS.len()),
        proptest::collection::vec(0usize..GAPS.len(), 1..40),
    )
        .prop_map(|(form, opener, trailing_comma, keys, values, gaps)| Spec {
            form,
            opener,
            trailing_comma,
            entries: keys
                .into_iter()
                .zip(values)
                .map(|(k, (v, kd, vd))| (k.to_owned(), v, kd, vd))
                .collect(),
            gaps,
        })
}

type Changes = (BTreeMap<String, String>, Option<String>, Vec<String>);
type Case = (Spec, BTreeMap<String, String>, Option<String>, Vec<String>);

/// Some of the file's services with new URLs, maybe one new service, and
/// some services to remove.
fn changes(spec: &Spec) -> impl Strategy<Value = Changes> + use<> {
    let keys: Vec<String> = spec.entries.iter().map(|e| e.0.clone()).collect();
    let n = keys.len();
    (
        proptest::sample::subsequence(keys.clone(), 0..=n),
        proptest::collection::vec(url(), n),
        proptest::option::of(url()),
        proptest::sample::subsequence(keys, 0..=n),
    )
        .prop_map(|(keys, urls, added, removed)| {
            (keys.into_iter().zip(urls).collect(), added, removed)
        })
}

fn case() -> impl Strategy<Value = Case> {
    spec().prop_flat_map(|s| {
        let c = changes(&s);
        (Just(s), c).prop_map(|(s, (c, a, r))| (s, c, a, r))
    })
}

/// `changes` as sets, plus the removal of each service in `removed` that
/// is not being set.
fn with_removals(
    changes: &BTreeMap<String, String>,
    removed: &[String],
) -> BTreeMap<String, Change> {
    let mut all: BTreeMap<String, Change> = changes
        .iter()
        .map(|(k, v)| (k.clone(), Change::Set(v.clone())))
        .collect();
    for k in removed {
        all.entry(k.clone()).or_insert(Change::Remove);
    }
    all
}

fn expected(
    mut map: BTreeMap<String, String>,
    changes: &BTreeMap<String, Change>,
) -> BTreeMap<String, String> {
    for (k, c) in changes {
        match c {
            Change::Set(v) => {
                map.insert(k.clone(), v.clone());
            }
            Change::Remove => {
                map.remove(k);
            }
        }
    }
    map
}

/// The input with exactly the changed values' insides replaced.
fn spliced(g: &Generated, changes: &BTreeMap<String, String>) -> String {
    let mut edits: Vec<(Range<usize>, String)> = changes
        .iter()
        .map(|(k, v)| {
            let (range, double) = &g.values[k];
            (range.clone(), escape(v, *double))
        })
        .collect();
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::new();
    let mut at = 0;
    for (r, with) in edits {
        out.push_str(&g.text[at..r.start]);
        out.push_str(&with);
        at = r.end;
    }
    out.push_str(&g.text[at..]);
    out
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn patches_change_only_the_values_they_must((spec, changes, added, removed) in case()) {
        let g = spec.generate();
        prop_assert_eq!(read(&g.text).unwrap(), spec.map(), "{}", g.text);
        let out = patch(&g.text, &changes).unwrap();
        prop_assert_eq!(&out, &spliced(&g, &changes), "{}", g.text);
        let mut want = spec.map();
        want.extend(changes.clone());
        prop_assert_eq!(read(&out).unwrap(), want.clone());

        if let Some(url) = added {
            let mut more = changes.clone();
            more.insert("brand-new".into(), url.clone());
            let out = patch(&g.text, &more).unwrap();
            want.insert("brand-new".into(), url);
            prop_assert_eq!(read(&out).unwrap(), want, "{}", out);
        }

        let all = with_removals(&changes, &removed);
        let out = apply(&g.text, &all).unwrap();
        prop_assert_eq!(read(&out).unwrap(), expected(spec.map(), &all), "{}", out);
    }
}

// ---- against PHP itself ----

fn php_available() -> bool {
    Command::new("php")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn php_lint(file: &Path) -> Result<(), String> {
    let out = Command::new("php").arg("-l").arg(file).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The `_url` map PHP computes from `file`.
fn php_map(file: &Path) -> BTreeMap<String, String> {
    let out = Command::new("php")
        .arg("-r")
        .arg(
            "define('BASEPATH', '/'); $config = array(); include $argv[1]; \
             echo json_encode((object) $config['_url']);",
        )
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn check_with_php(dir: &Path, text: &str) -> Result<(), String> {
    let file = dir.join("config.php");
    std::fs::write(&file, text).unwrap();
    php_lint(&file)?;
    let ours = read(text).map_err(|e| e.to_string())?;
    let php = php_map(&file);
    if ours != php {
        return Err(format!("we read {ours:?}, PHP computes {php:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(120))]

    #[test]
    fn php_accepts_every_output_and_agrees_on_the_map((spec, mut changes, added, removed) in case()) {
        prop_assume!(php_available());
        let dir = tempfile::tempdir().unwrap();
        let g = spec.generate();
        check_with_php(dir.path(), &g.text).map_err(TestCaseError::fail)?;
        if let Some(url) = added {
            changes.insert("brand-new".into(), url);
        }
        let out = patch(&g.text, &changes).unwrap();
        check_with_php(dir.path(), &out).map_err(TestCaseError::fail)?;
        let all = with_removals(&changes, &removed);
        let out = apply(&g.text, &all).unwrap();
        check_with_php(dir.path(), &out).map_err(TestCaseError::fail)?;
        prop_assert_eq!(read(&out).unwrap(), expected(spec.map(), &all));
    }
}

#[test]
fn the_sample_gateway_config_round_trips_through_php() {
    if !php_available() {
        eprintln!("php not installed: skipped");
        return;
    }
    let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/samples/erangel/application/config/production/config.php");
    let Ok(text) = std::fs::read_to_string(&sample) else {
        eprintln!("{} missing: skipped", sample.display());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    check_with_php(dir.path(), &text).unwrap();
    let changes = BTreeMap::from([
        ("account".to_owned(), "http://172.17.0.1:9001".to_owned()),
        ("wallet".to_owned(), "http://172.17.0.1:9009".to_owned()),
    ]);
    let out = patch(&text, &changes).unwrap();
    check_with_php(dir.path(), &out).unwrap();
    assert_eq!(read(&out).unwrap()["account"], "http://172.17.0.1:9001");
}
