use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const SAMPLE: &str = r#"<?php
defined('BASEPATH') OR exit('No direct script access allowed');
/* An old map, kept for reference:
$config['_url'] = array('account' => 'http://decoy');
*/
$config['base_url'] = '';
# $config['_url']['account'] = 'http://decoy-hash';
$config['_url'] = array(
	'account' => 'http://ocp-account.example.invalid',
	'payment'   =>  "http://ocp-payment.example.invalid", // settlement team
	// 'legacy-user' => 'http://ocp-legacy.example.invalid',
	'user' => 'http://ocp-user.example.invalid',
);
$config['proxy_timeout'] = 30;
"#;

const SHORT: &str = "<?php\n$config [ \"_url\" ]=[ 'account'=>'http://a' ,\n  \"payment\"  =>  'http://p'  ] ;\n$x = $config['_url'];\n";

const LINES: &str = "<?php\n$config['_url']['account'] = \"http://a\";\n$config['_url'][ 'payment' ]='http://p'; // pay\n  $config['_url'][\"user\"]  =  'http://u';\n";

const MIXED: &str = "<?php\n$config['_url'] = ARRAY ( 'account' => 'http://old', 'user' => 'http://u' );\n$config['_url']['account'] = 'http://new';\n";

const ONE_LINE: &str = "<?php $config['_url'] = array('a'=>'x','b'=>\"y\"); ?>\n<p>$config['_url'] = array('a' => 'html');</p>\n";

#[test]
fn every_form_reads_as_php_would() {
    let cases: [(&str, &[(&str, &str)]); 5] = [
        (
            SAMPLE,
            &[
                ("account", "http://ocp-account.example.invalid"),
                ("payment", "http://ocp-payment.example.invalid"),
                ("user", "http://ocp-user.example.invalid"),
            ],
        ),
        (SHORT, &[("account", "http://a"), ("payment", "http://p")]),
        (
            LINES,
            &[
                ("account", "http://a"),
                ("payment", "http://p"),
                ("user", "http://u"),
            ],
        ),
        (MIXED, &[("account", "http://new"), ("user", "http://u")]),
        (ONE_LINE, &[("a", "x"), ("b", "y")]),
    ];
    for (text, want) in cases {
        assert_eq!(read(text).unwrap(), map(want), "{text}");
    }
}

#[test]
fn a_change_rewrites_only_the_value() {
    let out = patch(SAMPLE, &map(&[("payment", "http://10.0.0.5:9002")])).unwrap();
    assert_eq!(
        out,
        SAMPLE.replace(
            "\"http://ocp-payment.example.invalid\"",
            "\"http://10.0.0.5:9002\""
        )
    );
    // The overriding statement changes, not the overridden entry.
    let out = patch(MIXED, &map(&[("account", "http://x")])).unwrap();
    assert_eq!(out, MIXED.replace("'http://new'", "'http://x'"));
    let out = patch(LINES, &map(&[("user", "http://z")])).unwrap();
    assert_eq!(out, LINES.replace("'http://u'", "'http://z'"));
}

#[test]
fn an_unchanged_value_leaves_the_file_identical() {
    let same = read(SAMPLE).unwrap();
    assert_eq!(patch(SAMPLE, &same).unwrap(), SAMPLE);
}

#[test]
fn values_keep_their_quote_style_and_are_escaped() {
    let out = patch(SHORT, &map(&[("account", "http://h/it's\\x")])).unwrap();
    assert!(out.contains(r"'http://h/it\'s\\x'"), "{out}");
    let out = patch(LINES, &map(&[("account", "http://h/$x\"")])).unwrap();
    assert!(out.contains(r#""http://h/\$x\"""#), "{out}");
    assert_eq!(read(&out).unwrap()["account"], "http://h/$x\"");
}

#[test]
fn a_new_service_is_written_like_its_neighbours() {
    let add = map(&[("wallet", "http://w")]);
    let out = patch(SAMPLE, &add).unwrap();
    assert!(
        out.contains(
            "\t'user' => 'http://ocp-user.example.invalid',\n\t'wallet' => 'http://w',\n);"
        ),
        "{out}"
    );
    let out = patch(SHORT, &add).unwrap();
    assert!(
        out.contains("'http://p',\n  \"wallet\"  =>  'http://w'  ] ;"),
        "{out}"
    );
    let out = patch(LINES, &add).unwrap();
    assert!(
        out.ends_with("  $config['_url'][\"user\"]  =  'http://u';\n  $config['_url'][\"wallet\"]  =  'http://w';\n"),
        "{out}"
    );
    let out = patch(ONE_LINE, &add).unwrap();
    assert!(out.contains("'b'=>\"y\", 'wallet'=>\"http://w\")"), "{out}");
    let out = patch("<?php $config['_url'] = [];", &add).unwrap();
    assert_eq!(out, "<?php $config['_url'] = ['wallet' => 'http://w'];");
    for text in [SAMPLE, SHORT, LINES, MIXED, ONE_LINE] {
        let out = patch(text, &add).unwrap();
        let mut want = read(text).unwrap();
        want.insert("wallet".into(), "http://w".into());
        assert_eq!(read(&out).unwrap(), want, "{out}");
    }
}

#[test]
fn what_cannot_be_parsed_names_its_line() {
    let cases = [
        (
            "<?php\n$config['_url'] = array(\n  'a' => 'http://' . $host,\n);",
            3,
            "'a'",
        ),
        ("<?php\n\n$config['_url'] = urls();", 3, "array"),
        (
            "<?php\n$config['_url'] = array(\n 'a' => \"http://$host\",\n);",
            3,
            "interpolates",
        ),
        (
            "<?php\n$config['_url'] = array(\n 'a' => 'x',\n",
            2,
            "never closed",
        ),
        (
            "<?php\n$config['_url'] = array(\n 'a' => 'x\n);",
            3,
            "never closed",
        ),
        ("<?php\n$config['_url']['a'] = 'x'\n$y = 1;", 3, "';'"),
        (
            "<?php\n$config['_url'] = array(\n  HOST => 'x',\n);",
            3,
            "service name",
        ),
    ];
    for (text, line, words) in cases {
        match RouteMap::parse(text) {
            Err(e @ RouteError::Syntax { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("config.php line {line}: ")),
                    "{msg}"
                );
                assert!(msg.contains(words), "{msg}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    assert_eq!(read("<?php $config['other'] = 1;"), Err(RouteError::NoMap));
    assert_eq!(read("no php here"), Err(RouteError::NoMap));
}

#[test]
fn control_characters_never_reach_the_file() {
    let err = patch(SAMPLE, &map(&[("account", "http://a\n';system('x');//")])).unwrap_err();
    assert!(matches!(err, RouteError::InvalidUrl { .. }), "{err}");
}

#[test]
fn a_removed_service_takes_its_line_and_only_its_line() {
    let remove = |text: &str, services: &[&str]| {
        let changes = services
            .iter()
            .map(|s| ((*s).to_owned(), Change::Remove))
            .collect();
        apply(text, &changes).unwrap()
    };
    let out = remove(SAMPLE, &["payment"]);
    assert_eq!(
        out,
        SAMPLE.replace(
            "\t'payment'   =>  \"http://ocp-payment.example.invalid\", // settlement team\n",
            ""
        )
    );
    // The last entry without a comma takes the comma before it.
    assert_eq!(
        remove(SHORT, &["payment"]),
        "<?php\n$config [ \"_url\" ]=[ 'account'=>'http://a'  ] ;\n$x = $config['_url'];\n"
    );
    assert_eq!(
        remove(SHORT, &["account", "payment"]),
        "<?php\n$config [ \"_url\" ]=[ \n    ] ;\n$x = $config['_url'];\n"
    );
    assert_eq!(
        remove(LINES, &["payment"]),
        "<?php\n$config['_url']['account'] = \"http://a\";\n  $config['_url'][\"user\"]  =  'http://u';\n"
    );
    // Every definition that would be live goes, not just the last.
    let out = remove(MIXED, &["account"]);
    assert_eq!(read(&out).unwrap(), map(&[("user", "http://u")]), "{out}");
    // The last line of a map written line by line leaves an empty map.
    let out = remove(LINES, &["account", "payment", "user"]);
    assert_eq!(read(&out).unwrap(), map(&[]), "{out}");
    assert!(out.ends_with("  $config['_url'] = array();\n"), "{out}");
    // Removing what is not there changes nothing.
    assert_eq!(remove(SAMPLE, &["wallet"]), SAMPLE);
    // A removal and a change at once.
    let mut changes = BTreeMap::new();
    changes.insert("user".to_owned(), Change::Remove);
    changes.insert("wallet".to_owned(), Change::Set("http://w".into()));
    changes.insert("account".to_owned(), Change::Set("http://a2".into()));
    let out = apply(SAMPLE, &changes).unwrap();
    assert_eq!(
        read(&out).unwrap(),
        map(&[
            ("account", "http://a2"),
            ("payment", "http://ocp-payment.example.invalid"),
            ("wallet", "http://w"),
        ]),
        "{out}"
    );
}
