use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{Base, MAX_DOCKERFILE_BYTES, parse};

fn bases(text: &str) -> Vec<String> {
    parse(text.as_bytes(), &BTreeMap::new())
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .bases
        .into_iter()
        .map(|b| b.image)
        .collect()
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn error(text: &str) -> String {
    parse(text.as_bytes(), &BTreeMap::new()).expect_err(text)
}

#[test]
fn every_from_form_is_read() {
    let text = "\
# syntax comment
from r.internal/ci/a:1 AS build
RUN make
FROM --platform=linux/amd64 r.internal/ci/b:2
COPY --from=build /out /out
FROM build as final
FROM r.internal/ci/a:1
";
    assert_eq!(bases(text), ["r.internal/ci/a:1", "r.internal/ci/b:2"]);
    let parsed = parse(text.as_bytes(), &BTreeMap::new()).unwrap();
    assert_eq!(parsed.stages, ["build", "final"]);
    assert_eq!(
        parsed.bases[1],
        Base {
            line: 4,
            image: "r.internal/ci/b:2".into()
        }
    );
}

#[test]
fn continuations_and_comments_inside_them_are_joined() {
    let text = "FROM \\\n  # a comment inside\n  r.internal/ci/a:1 \\\n  AS one\nRUN true\n";
    assert_eq!(bases(text), ["r.internal/ci/a:1"]);
    let text = "# escape=`\nFROM `\n r.internal/ci/a:1\nRUN dir c:\\\n";
    assert_eq!(bases(text), ["r.internal/ci/a:1"]);
}

#[test]
fn scratch_and_stage_references_fetch_nothing() {
    assert!(bases("FROM scratch\nCOPY x /x\n").is_empty());
    assert_eq!(
        bases("FROM r.internal/a:1 AS a\nFROM a\nCOPY --from=0 /x /x\nCOPY --from=a /y /y\n"),
        ["r.internal/a:1"]
    );
}

#[test]
fn copy_from_and_run_mount_from_an_image_are_bases_too() {
    let text = "FROM scratch\nCOPY --chown=1 --from=r.internal/tools:3 /bin/x /x\n\
                RUN --mount=type=bind,from=r.internal/other:4,target=/o true\n";
    assert_eq!(bases(text), ["r.internal/tools:3", "r.internal/other:4"]);
}

#[test]
fn args_before_from_are_resolved_from_build_args_then_defaults() {
    let text = "ARG REG=r.internal\nARG TAG\nFROM $REG/ci/a:${TAG:-9}\nFROM ${REG}/b:1\n";
    let parsed = parse(text.as_bytes(), &args(&[("TAG", "2")])).unwrap();
    let images: Vec<_> = parsed.bases.iter().map(|b| b.image.as_str()).collect();
    assert_eq!(images, ["r.internal/ci/a:2", "r.internal/b:1"]);
    let parsed = parse(text.as_bytes(), &BTreeMap::new()).unwrap();
    assert_eq!(parsed.bases[0].image, "r.internal/ci/a:9");
    let overridden = parse(text.as_bytes(), &args(&[("REG", "evil.example")])).unwrap();
    assert_eq!(overridden.bases[1].image, "evil.example/b:1");
}

#[test]
fn a_variable_with_no_value_or_no_arg_is_refused() {
    assert!(error("ARG TAG\nFROM r.internal/a:$TAG\n").contains("$TAG has no value"));
    assert!(error("FROM r.internal/a:$TAG\n").contains("not declared by an ARG"));
    assert!(error("FROM r.internal/a:${TAG:+x}\n").contains("only $NAME"));
    assert!(error("FROM r.internal/a:${TAG\n").contains("unclosed"));
}

#[test]
fn misshapen_files_are_refused_with_their_line() {
    assert_eq!(
        error("RUN true\n"),
        "line 1: RUN before the first FROM; only ARG may come before it"
    );
    assert_eq!(error("# nothing\n"), "has no FROM");
    assert!(error("FROM\n").contains("names no image"));
    assert!(error("FROM a b c d\n").starts_with("line 1: FROM must be"));
    assert!(error("FROM --network=host r.internal/a:1\n").contains("only --platform"));
    assert!(error("FROM r.internal/a:1 AS Bad!\n").contains("stage name"));
    assert!(error("FROM r/a:1 AS x\nFROM r/b:1 AS x\n").contains("used twice"));
    assert_eq!(error("FROM a\0\n"), "contains a NUL byte");
    assert_eq!(
        parse(&[0xff, 0xfe], &BTreeMap::new()).unwrap_err(),
        "is not UTF-8 text"
    );
    let huge = format!(
        "FROM r.internal/a:1\n#{}\n",
        "x".repeat(MAX_DOCKERFILE_BYTES)
    );
    assert!(error(&huge).contains("at most"));
    let many: String = (0..70)
        .map(|i| format!("FROM r.internal/a:{i}\n"))
        .collect();
    assert!(error(&many).contains("more than 64 images"));
}

proptest! {
    /// Whatever the bytes, the parser answers (no panic), and any base it
    /// returns came from the text or an argument.
    #[test]
    fn any_text_is_answered(text in ".{0,400}", tag in "[a-z0-9]{1,8}") {
        if let Ok(parsed) = parse(text.as_bytes(), &args(&[("T", &tag)])) {
            for base in parsed.bases {
                prop_assert!(!base.image.is_empty());
            }
        }
    }

    /// Keywords are read in any case.
    #[test]
    fn keywords_in_any_case(from in "[fF][rR][oO][mM]", as_ in "[aA][sS]") {
        let text = format!("{from} r.internal/a:1 {as_} one\n{from} one\n");
        prop_assert_eq!(bases(&text), vec!["r.internal/a:1".to_owned()]);
    }
}
