//! The rules of a git remote's URL and of a ref's name, which the config (a
//! profile's `git_remotes`, `git.seed`) and the job (`source.repo`,
//! `source.ref`) share.

/// The longest repository URL a job or the config may name.
pub const MAX_REPO_URL_BYTES: usize = 2048;
/// The longest ref name a job may name (git's own limit for a ref file name).
pub const MAX_REF_BYTES: usize = 255;

/// A remote's URL: `https://`, `ssh://` or `git://` (or `http://` to a loopback
/// host only: a token must not cross a network in the clear), an authority, and
/// a path; no password in it, no `.` or `..` segment (so a URL that starts with an
/// allowed prefix cannot lead out of it), nothing but printable ASCII. Or the rule
/// it breaks.
pub fn check_remote_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_REPO_URL_BYTES {
        return Err(format!("at most {MAX_REPO_URL_BYTES} bytes"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains('\\') {
        return Err("only printable ASCII, no space or backslash".to_owned());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("must be an https://, ssh:// or git:// URL".to_owned());
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    match scheme {
        "https" | "ssh" | "git" => {}
        "http" if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => {}
        "http" => return Err("http:// only to a loopback host; use https://".to_owned()),
        _ => return Err("must be an https://, ssh:// or git:// URL".to_owned()),
    }
    if host.is_empty() {
        return Err("names no host".to_owned());
    }
    if scheme != "ssh" && authority.contains('@') {
        return Err("must not carry credentials (the profile's git_credentials do)".to_owned());
    }
    if authority
        .split('@')
        .next()
        .is_some_and(|user| user.contains(':'))
        && authority.contains('@')
    {
        return Err("must not carry a password".to_owned());
    }
    if path.split('/').any(|s| s == "." || s == "..") || url.contains('%') {
        return Err("no . or .. segment and no %-escape in the path".to_owned());
    }
    Ok(())
}

/// Whether `url` is one of `prefixes` or below one.
pub fn remote_allowed(url: &str, prefixes: &[String]) -> bool {
    prefixes
        .iter()
        .any(|prefix| url.starts_with(prefix.as_str()))
}

/// A branch or tag name by git's `check-ref-format` rules (`main`,
/// `release/1.2`, `refs/tags/v1`), bounded; or the rule it breaks.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_REF_BYTES {
        return Err(format!("1 to {MAX_REF_BYTES} bytes"));
    }
    if name
        .bytes()
        .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
    {
        return Err("no control character, space or any of ~^:?*[\\".to_owned());
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') {
        return Err("must not start with - or /, nor end with /".to_owned());
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") || name == "@" {
        return Err("no .., @{ or //, and not @".to_owned());
    }
    let bad_component = |c: &str| c.starts_with('.') || c.ends_with(".lock") || c.ends_with('.');
    if name.split('/').any(bad_component) {
        return Err("no part may start with . or end with . or .lock".to_owned());
    }
    Ok(())
}

/// A commit's full id: 40 hexadecimal digits (SHA-1), in lower case.
pub fn parse_sha(text: &str) -> Option<String> {
    (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls() {
        for good in [
            "https://git.example.com/org/repo.git",
            "ssh://git@git.example.com:22/org/repo.git",
            "git://127.0.0.1:9418/repo.git",
            "http://127.0.0.1:9080/git/repo.git",
        ] {
            assert_eq!(check_remote_url(good), Ok(()), "{good}");
        }
        for (bad, rule) in [
            ("file:///etc", "https://, ssh:// or git://"),
            ("ext::sh -c x", "printable ASCII"),
            ("http://git.example.com/r", "loopback"),
            ("https://user:tok@git.example.com/r", "credentials"),
            ("ssh://git:pw@host/r", "password"),
            ("https://git.example.com/org/../other/r", ".."),
            ("https://git.example.com/org/%2e%2e/r", "%-escape"),
            ("https:///r", "no host"),
        ] {
            let said = check_remote_url(bad).unwrap_err();
            assert!(said.contains(rule), "{bad}: {said}");
        }
        let prefixes = ["https://git.example.com/org/".to_owned()];
        assert!(remote_allowed(
            "https://git.example.com/org/r.git",
            &prefixes
        ));
        assert!(!remote_allowed(
            "https://git.example.com/other/r.git",
            &prefixes
        ));
    }

    #[test]
    fn ref_names() {
        for good in ["main", "release/1.2", "refs/tags/v1.0", "feature-x_y"] {
            assert_eq!(check_ref_name(good), Ok(()), "{good}");
        }
        for bad in [
            "", "-x", "/x", "x/", "a..b", "a@{1}", "a//b", ".hidden", "x.lock", "a b", "a\nb",
            "a:b", "x.",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_ref_name(&"x".repeat(256)).is_err());
        assert_eq!(
            parse_sha(&"A".repeat(40)).as_deref(),
            Some("a".repeat(40).as_str())
        );
        assert_eq!(parse_sha("abc"), None);
        assert_eq!(parse_sha(&"g".repeat(40)), None);
    }
}
