//! Checks every `.ptx` file in `$LABELWISE_PTX_DIR` (if set) for instructions the interpreter
//! cannot run, e.g. `LABELWISE_PTX_DIR=target/ptx cargo test --test ptx_external`.

#[test]
fn external_ptx_is_fully_supported() {
    let Ok(dir) = std::env::var("LABELWISE_PTX_DIR") else {
        eprintln!("LABELWISE_PTX_DIR not set; nothing to check");
        return;
    };
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("LABELWISE_PTX_DIR is readable") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ptx") {
            let text = std::fs::read_to_string(&path).unwrap();
            match labelwise::ptx::Module::parse(&text) {
                Ok(m) => {
                    for u in m.unsupported() {
                        problems.push(format!("{}: {u}", path.display()));
                    }
                    eprintln!("{}: {} kernels", path.display(), m.kernel_names().len());
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
