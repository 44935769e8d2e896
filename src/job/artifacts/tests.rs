use super::*;
use proptest::prelude::*;

thread_local! {
    /// Steps of the wildcard walk, at both levels, on this thread.
    pub static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The old recursive matcher, exponential but plainly right: the oracle.
fn oracle(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| oracle(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && oracle(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && oracle(rest, &name[1..]),
    }
}

/// Runs `f`, returning its value and the walk's steps.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    STEPS.with(|steps| steps.set(0));
    let value = f();
    (value, STEPS.with(std::cell::Cell::get))
}

#[test]
fn the_backtracking_bomb_is_linear() {
    // The case: it ran for more than 90 s under the old matcher.
    let name = format!("{}.txt", "a".repeat(200));
    let bomb = pattern("*a*a*a*a*a*a*a*a*a*a*a*a*b");
    let (matched, steps) = counted(|| bomb.matches(&name));
    assert!(!matched);
    // At most (pattern + 1) x (name + 1) steps.
    assert!(steps <= 27 * 205, "{steps} steps");
    let deep = format!("{}x", "d/".repeat(300));
    let bomb = pattern("**/**/**/**/**/**/**/**/d/**/**/**/**/**/**/y");
    let (matched, steps) = counted(|| bomb.matches(&deep));
    assert!(!matched);
    assert!(steps <= 17 * 302 * 4, "{steps} steps");
}

#[test]
fn too_many_wildcards_are_refused() {
    let many = "*a".repeat(MAX_WILDCARDS + 1);
    assert!(Pattern::parse(&many).unwrap_err().contains("wildcards"));
    assert!(Pattern::parse(&"*a".repeat(MAX_WILDCARDS)).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The linear walk agrees with the recursive one, in at most
    /// (pattern + 1) x (name + 1) steps.
    #[test]
    fn matches_as_the_oracle_does_in_linear_steps(
        pattern in "[ab*?]{0,12}",
        name in "[ab]{0,40}",
    ) {
        let (matched, steps) = counted(|| match_segment(pattern.as_bytes(), name.as_bytes()));
        prop_assert_eq!(matched, oracle(pattern.as_bytes(), name.as_bytes()));
        prop_assert!(steps <= ((pattern.len() + 1) * (name.len() + 1)) as u64);
    }
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap()
}

#[test]
fn globs_match_within_a_segment_and_double_stars_across() {
    assert!(pattern("out.txt").matches("out.txt"));
    assert!(!pattern("out.txt").matches("sub/out.txt"));
    assert!(pattern("target/*.tar.gz").matches("target/app.tar.gz"));
    assert!(!pattern("target/*.tar.gz").matches("target/x/app.tar.gz"));
    assert!(pattern("**/*.xml").matches("report.xml"));
    assert!(pattern("**/*.xml").matches("a/b/c/report.xml"));
    assert!(pattern("logs/**").matches("logs/a/b.txt"));
    assert!(pattern("file-?.log").matches("file-1.log"));
    assert!(!pattern("file-?.log").matches("file-10.log"));
    assert!(pattern("./dist/app").matches("dist/app"));
}

#[test]
fn patterns_stay_inside_the_workdir() {
    assert!(
        Pattern::parse("/etc/passwd")
            .unwrap_err()
            .contains("relative")
    );
    assert!(Pattern::parse("../x").unwrap_err().contains(".."));
    assert!(Pattern::parse("a/../../x").unwrap_err().contains(".."));
    assert!(Pattern::parse("").is_err());
    assert!(Pattern::parse(".").is_err());
}

#[test]
fn each_folder_is_read_once() {
    let patterns = [
        pattern("target/release/*.bin"),
        pattern("target/*.txt"),
        pattern("out/a"),
    ];
    assert_eq!(bases(&patterns), ["out/a", "target"]);
    let patterns = [pattern("**/*.xml"), pattern("target/*.txt")];
    assert_eq!(bases(&patterns), [""]);
}

#[test]
fn left_out_files_are_listed_then_counted() {
    let mut collected = Collected::default();
    for n in 0..103 {
        collected.leave_out(&format!("f{n}"), "cap".into());
    }
    let left_out = collected.take_left_out();
    assert_eq!(left_out.len(), 101);
    assert_eq!(left_out[100].reason, "and 3 more");
}
