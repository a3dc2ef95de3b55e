//! The data path's dependencies run one way. Each top-level module of the library may refer
//! only to modules below it in `LAYERS`; a `use crate::…` that points up the list (an import
//! cycle in the making) fails this test with the file that does it.

use std::path::Path;

/// Lowest first: a module may depend on any module before it, never after.
const LAYERS: &[&str] = &[
    "body",
    "crypto",
    "pem",
    "net",
    "policy",
    "config",
    "upstream",
    "refusal",
    "observe",
    "state",
    "context",
    "credential",
    "fleet",
    "rung",
    "frontend",
    "admin",
    "control",
    "cli",
    "app",
    "jail",
    // Entry points for the fuzz targets: may reach anything, nothing reaches it.
    "fuzzing",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/rung/bump/mod.rs` → `rung`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` referred to outside `#[cfg(test)]` code.
fn references(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn dependencies_follow_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut violations = Vec::new();
    let mut seen_modules = 0;
    for file in &files {
        let module = top_module(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = rank(&module) else {
            violations.push(format!(
                "{}: module `{module}` is not in LAYERS",
                file.display()
            ));
            continue;
        };
        seen_modules += 1;
        for target in references(&std::fs::read_to_string(file).unwrap()) {
            match rank(&target) {
                Some(r) if r > own => violations.push(format!(
                    "{}: `{module}` refers to `crate::{target}`, which is above it",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: `crate::{target}` is not in LAYERS",
                    file.display()
                )),
                _ => {}
            }
        }
    }
    assert!(seen_modules > 30, "found only {seen_modules} source files");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_catches_an_upward_reference() {
    let refs = references("use crate::rung::Ladder;\n#[cfg(test)]\nuse crate::app::App;");
    assert_eq!(refs, vec!["rung".to_owned()]);
}
