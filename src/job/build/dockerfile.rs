//! What a Dockerfile pulls: every `FROM` (and every `COPY --from=`/`RUN
//! --mount=from=` that names an image rather than a stage), with `ARG`s before the
//! first `FROM` resolved from the job's `build_args` or their defaults. Pure: the
//! runner reads the file, this module reads the text, the image policy judges
//! what it finds. Read as buildah 1.28 reads it (no heredocs, which came later):
//! one instruction per logical line, `\` (or the `# escape=` directive's
//! character) continuing a line, `#` lines dropped, keywords in any case.

use std::collections::BTreeMap;

/// The biggest Dockerfile read. Real ones are a few KiB; this one is read into
/// the agent's memory and echoed in rejections.
pub const MAX_DOCKERFILE_BYTES: usize = 1 << 20;
/// The most images a Dockerfile may name (stages and `--from`s together).
pub const MAX_BASES: usize = 64;

/// Something the build reads an image from, as written after substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The 1-based line its instruction starts on.
    pub line: usize,
    /// The image reference, variables substituted.
    pub image: String,
}

/// What a Dockerfile needs from outside and what its stages are called.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Each image once, in order of first use; no `scratch`, no stage names.
    pub bases: Vec<Base>,
    /// Stage names (`AS name`), lower-cased.
    pub stages: Vec<String>,
}

/// Reads `text`; the error is the rule broken, with its line.
pub fn parse(text: &[u8], build_args: &BTreeMap<String, String>) -> Result<Parsed, String> {
    if text.len() > MAX_DOCKERFILE_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_DOCKERFILE_BYTES}",
            text.len()
        ));
    }
    let text = std::str::from_utf8(text).map_err(|_| "is not UTF-8 text".to_owned())?;
    if text.contains('\0') {
        return Err("contains a NUL byte".to_owned());
    }
    let mut globals: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut parsed = Parsed::default();
    let mut seen_from = false;
    for (line, instruction) in logical_lines(text) {
        let (keyword, rest) = split_word(&instruction);
        let keyword = keyword.to_ascii_uppercase();
        let at = |rule: String| format!("line {line}: {rule}");
        match keyword.as_str() {
            "ARG" if !seen_from => {
                for (name, default) in arg_decls(rest).map_err(at)? {
                    let value = build_args.get(&name).cloned().or(default);
                    globals.insert(name, value);
                }
            }
            "FROM" => {
                seen_from = true;
                let (image, stage) = from_operands(rest).map_err(at)?;
                let image = substitute(&image, &globals).map_err(at)?;
                parsed.add_image(line, &image).map_err(at)?;
                if let Some(stage) = stage {
                    if parsed.stages.contains(&stage) {
                        return Err(at(format!("the stage name {stage:?} is used twice")));
                    }
                    parsed.stages.push(stage);
                }
            }
            "COPY" | "ADD" | "RUN" if seen_from => {
                for from in from_flags(rest) {
                    let from = substitute(&from, &globals).map_err(at)?;
                    // A stage by index (`--from=0`) or by name is the build's own.
                    if !from.bytes().all(|b| b.is_ascii_digit()) {
                        parsed.add_image(line, &from).map_err(at)?;
                    }
                }
            }
            "" => {}
            _ if !seen_from && keyword != "ARG" => {
                return Err(at(format!(
                    "{keyword} before the first FROM; only ARG may come before it"
                )));
            }
            _ => {}
        }
        if parsed.bases.len() > MAX_BASES {
            return Err(format!("names more than {MAX_BASES} images"));
        }
    }
    if !seen_from {
        return Err("has no FROM".to_owned());
    }
    Ok(parsed)
}

impl Parsed {
    /// `image` as a base unless it is `scratch` (nothing to fetch) or an earlier
    /// stage (the build's own).
    fn add_image(&mut self, line: usize, image: &str) -> Result<(), String> {
        if image.is_empty() {
            return Err("names an empty image".to_owned());
        }
        let lower = image.to_ascii_lowercase();
        if lower == "scratch" || self.stages.contains(&lower) {
            return Ok(());
        }
        if !self.bases.iter().any(|b| b.image == image) {
            self.bases.push(Base {
                line,
                image: image.to_owned(),
            });
        }
        Ok(())
    }
}

/// Each instruction with the line it starts on: continuations joined, comment
/// lines and blank lines dropped, the escape directive obeyed.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut directives = true;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if directives {
            // Parser directives: `# name=value` lines at the very top only.
            if let Some(value) = directive(trimmed, "escape") {
                if value == "`" {
                    escape = '`';
                }
                continue;
            }
            if !(trimmed.starts_with('#') && directive_like(trimmed)) {
                directives = false;
            }
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if current.is_none() && trimmed.is_empty() {
            continue;
        }
        let body = raw.trim_end();
        let (piece, continues) = match body.strip_suffix(escape) {
            Some(piece) => (piece, true),
            None => (body, false),
        };
        let (_, text) = current.get_or_insert_with(|| (i + 1, String::new()));
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(piece.trim());
        if !continues {
            out.extend(current.take());
        }
    }
    out.extend(current.take());
    out
}

fn directive_like(line: &str) -> bool {
    line[1..]
        .trim_start()
        .split_once('=')
        .is_some_and(|(name, _)| {
            !name.trim().is_empty() && name.trim().bytes().all(|b| b.is_ascii_alphabetic())
        })
}

fn directive<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (key, value) = line.strip_prefix('#')?.trim_start().split_once('=')?;
    key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
}

/// The first word and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (text, ""),
    }
}

/// `ARG NAME[=default] [NAME2[=default] ...]`.
fn arg_decls(rest: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut decls = Vec::new();
    for word in rest.split_whitespace() {
        let (name, default) = match word.split_once('=') {
            Some((name, value)) => (name, Some(unquote(value).to_owned())),
            None => (word, None),
        };
        if !crate::rules::valid_env_name(name) {
            return Err(format!(
                "ARG {:?}: a name must match ^[A-Za-z_][A-Za-z0-9_]*$",
                crate::rules::truncate(name, 64)
            ));
        }
        decls.push((name.to_owned(), default));
    }
    if decls.is_empty() {
        return Err("ARG names nothing".to_owned());
    }
    Ok(decls)
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// `[--platform=…] image [AS name]`: the image as written and the stage name.
fn from_operands(rest: &str) -> Result<(String, Option<String>), String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut i = 0;
    while let Some(flag) = words.get(i).filter(|w| w.starts_with("--")) {
        let name = flag.split_once('=').map_or(*flag, |(n, _)| n);
        if !name.eq_ignore_ascii_case("--platform") {
            return Err(format!(
                "FROM takes only --platform, not {:?}",
                crate::rules::truncate(name, 32)
            ));
        }
        if flag.contains('$') {
            return Err("FROM --platform with a variable is not supported".to_owned());
        }
        i += 1;
    }
    match &words[i.min(words.len())..] {
        [image] => Ok(((*image).to_owned(), None)),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            if !valid_stage_name(&name) {
                return Err(format!(
                    "stage name {:?} must match ^[a-z][a-z0-9._-]*$",
                    crate::rules::truncate(&name, 64)
                ));
            }
            Ok(((*image).to_owned(), Some(name)))
        }
        [] => Err("FROM names no image".to_owned()),
        _ => Err("FROM must be `FROM [--platform=…] image [AS name]`".to_owned()),
    }
}

pub fn valid_stage_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Each `--from=X` of a COPY or ADD and each `from=X` inside a RUN `--mount=`.
fn from_flags(rest: &str) -> Vec<String> {
    let mut found = Vec::new();
    for word in rest.split_whitespace() {
        if !word.starts_with("--") {
            // Flags come first; the rest is the instruction's own text.
            break;
        }
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        if name.eq_ignore_ascii_case("--from") {
            found.push(unquote(value).to_owned());
        } else if name.eq_ignore_ascii_case("--mount") {
            found.extend(
                value
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .filter(|(k, _)| k.eq_ignore_ascii_case("from"))
                    .map(|(_, v)| unquote(v).to_owned()),
            );
        }
    }
    found
}

/// `$NAME`, `${NAME}` and `${NAME:-default}` replaced from the global ARGs; a
/// variable with no value is an error (Docker would make it empty and pull
/// something else than meant).
fn substitute(text: &str, globals: &BTreeMap<String, Option<String>>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (expr, after) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("{text:?}: an unclosed ${{"))?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let (name, fallback) = match expr.split_once(":-") {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (expr, None),
        };
        if !crate::rules::valid_env_name(name) {
            return Err(format!(
                "{:?}: only $NAME, ${{NAME}} and ${{NAME:-default}} are substituted",
                crate::rules::truncate(text, 64)
            ));
        }
        let value = match (globals.get(name), fallback) {
            (Some(Some(value)), _) if !value.is_empty() => value.as_str(),
            (_, Some(fallback)) => fallback,
            (Some(_), None) => {
                return Err(format!(
                    "${name} has no value: give it in image_build.build_args or a default in its ARG"
                ));
            }
            (None, _) => {
                return Err(format!(
                    "${name} is not declared by an ARG before the first FROM"
                ));
            }
        };
        out.push_str(value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
