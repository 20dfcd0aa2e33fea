//! The house stays walkable: no room under `src/` over about 400 code lines (blank lines,
//! comments and its tests aside), no `impl` block over about 200, every module opening
//! with a `//!` comment saying what it owns, and no two top-level rooms importing each
//! other, directly or around a circle (a type two rooms need lives in the lower one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MOST_CODE_LINES: usize = 420;
const MOST_IMPL_LINES: usize = 210;

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, into: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    files
}

/// The file's text before its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn is_code(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty() && !line.starts_with("//")
}

/// The top-level room a file belongs to: `server` for src/server/turn.rs.
fn room(path: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

#[test]
fn rooms_and_impl_blocks_are_small_and_say_what_they_own() {
    let mut too_big = Vec::new();
    for path in sources() {
        let text = code(&path);
        let shown = path.display();
        assert!(
            text.starts_with("//!"),
            "{shown} does not open with a //! comment"
        );
        let lines = text.lines().filter(|line| is_code(line)).count();
        if lines > MOST_CODE_LINES {
            too_big.push(format!("{shown}: {lines} code lines"));
        }
        let all: Vec<&str> = text.lines().collect();
        for (at, line) in all.iter().enumerate() {
            if line.starts_with("impl") && line.ends_with('{') {
                let size = all[at + 1..]
                    .iter()
                    .take_while(|line| **line != "}")
                    .filter(|line| is_code(line))
                    .count();
                if size > MOST_IMPL_LINES {
                    too_big.push(format!("{shown}: `{line}` {size} code lines"));
                }
            }
        }
    }
    assert!(too_big.is_empty(), "{too_big:#?}");
}

#[test]
fn no_two_rooms_import_each_other() {
    // Which top-level rooms each room names (`crate::room`), the binary's and the fuzzing
    // properties' aside: they sit on top of everything.
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources() {
        let from = room(&path);
        if ["lib", "main", "fuzzing"].contains(&from.as_str()) {
            continue;
        }
        let text = code(&path);
        let named = imports.entry(from.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            let to = &rest[..end];
            if !to.is_empty() && to != from {
                named.insert(to.to_owned());
            }
        }
    }
    // A circle is a room that reaches itself: walk out from each, remembering the way.
    for start in imports.keys() {
        let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(room) = queue.pop_front() {
            for next in imports.get(room).into_iter().flatten() {
                if next == start {
                    let mut way = vec![room.clone()];
                    while let Some(&before) = came_from.get(way.last().unwrap()) {
                        way.push(before.clone());
                    }
                    way.reverse();
                    panic!("a circle of imports: {} -> {start}", way.join(" -> "));
                }
                if !came_from.contains_key(next) && next != start {
                    came_from.insert(next, room);
                    queue.push_back(next);
                }
            }
        }
    }
}
