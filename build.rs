//! Compiles `kernels/*.cu` with nvcc and embeds the results, or records that it could not.
//!
//! For each kernel file it writes, into OUT_DIR:
//! - `<name>.ptx`: PTX for `compute_80`, which the driver can JIT for any newer GPU and which the
//!   PTX interpreter executes on the CPU;
//! - `<name>.fatbin`: that PTX plus a native `sm_90` cubin (H100/H200), built from the same PTX,
//!   so the driver on an H200 loads machine code without JIT;
//!
//! and a Rust file `kernels_generated.rs`, included by `src/backend/cuda/kernels.rs`, that embeds
//! them. Without nvcc the build still succeeds: the generated file says so and
//! `CudaBackend::open` returns `Error::BuiltWithoutCuda`.
//!
//! nvcc is looked for in this order: `LABELWISE_NVCC` (an explicit choice: if it does not work
//! the kernels are not built, with a warning, rather than silently using another compiler),
//! `CUDA_HOME/bin/nvcc`, `nvcc` on `PATH`, then the folder `.ci/install-cuda.sh` installs into
//! (`.cuda/**/nvidia/cu13/bin/nvcc` in the repository).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Virtual architecture of the embedded PTX (Ampere): the oldest GPU we support.
const PTX_ARCH: &str = "compute_80";
/// Native code shipped alongside (Hopper: the H100/H200 machines we benchmark on).
const NATIVE_CODE: &str = "sm_90";

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = root.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    println!("cargo:rustc-check-cfg=cfg(labelwise_cuda_kernels)");
    let sources = kernel_sources(&kernel_dir);

    let generated = match find_nvcc(&root) {
        Ok((nvcc, version)) => {
            println!(
                "cargo:warning=labelwise: compiling {} kernel files with {} ({version})",
                sources.iter().filter(|p| is_cu(p)).count(),
                nvcc.display()
            );
            let started = std::time::Instant::now();
            let modules = compile_all(&nvcc, &sources, &out_dir);
            let entries: usize = modules
                .iter()
                .map(|m| fs::read_to_string(&m.ptx).map_or(0, |ptx| ptx.matches(".entry ").count()))
                .sum();
            println!(
                "cargo:warning=labelwise: built {entries} kernels in {} modules ({PTX_ARCH} PTX + \
                 {NATIVE_CODE} fatbin) in {:.1} s",
                modules.len(),
                started.elapsed().as_secs_f64()
            );
            // A newer nvcc at the same path should rebuild the kernels.
            println!("cargo:rerun-if-changed={}", nvcc.display());
            println!("cargo:rustc-cfg=labelwise_cuda_kernels");
            generated_rust(Some((&nvcc, &version)), &modules)
        }
        Err(why) => {
            println!(
                "cargo:warning=labelwise: CUDA kernels NOT built ({why}); the CUDA backend will \
                 return Error::BuiltWithoutCuda. Run .ci/install-cuda.sh, then `touch build.rs` \
                 (or set LABELWISE_NVCC) to rebuild with kernels."
            );
            generated_rust(None, &[])
        }
    };
    let path = out_dir.join("kernels_generated.rs");
    fs::write(&path, generated).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Every `.cu` and `.cuh` file of the kernel folder, sorted, each declared for rerun.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("kernel folder entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    files
}

fn is_cu(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some("cu")
}

/// The nvcc to use and its version line, or why there is none.
fn find_nvcc(root: &Path) -> Result<(PathBuf, String), String> {
    println!("cargo:rerun-if-env-changed=LABELWISE_NVCC");
    if let Some(explicit) = env::var_os("LABELWISE_NVCC") {
        let path = PathBuf::from(&explicit);
        return nvcc_version(&path)
            .map(|v| (path.clone(), v))
            .map_err(|e| format!("LABELWISE_NVCC={} does not work: {e}", path.display()));
    }

    let mut candidates = Vec::new();
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("bin").join("nvcc"));
    }
    println!("cargo:rerun-if-env-changed=PATH");
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join("nvcc")));
    }
    let default_install = root.join(".cuda");
    // Not declared for rerun: cargo would rescan the whole 300 MB install on every build.
    if default_install.exists() {
        candidates.extend(find_installed_nvcc(&default_install));
    }

    let mut tried = Vec::new();
    for candidate in candidates.into_iter().filter(|c| c.is_file()) {
        match nvcc_version(&candidate) {
            Ok(v) => return Ok((candidate, v)),
            Err(e) => tried.push(format!("{}: {e}", candidate.display())),
        }
    }
    if tried.is_empty() {
        Err("no nvcc in CUDA_HOME, PATH or .cuda/".into())
    } else {
        Err(format!("no working nvcc ({})", tried.join("; ")))
    }
}

/// `<dir>/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc`, the install script's layout.
fn find_installed_nvcc(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(libs) = fs::read_dir(dir.join("lib")) else {
        return found;
    };
    for lib in libs.flatten() {
        let nvcc = lib.path().join("site-packages/nvidia/cu13/bin/nvcc");
        if nvcc.is_file() {
            found.push(nvcc);
        }
    }
    found.sort();
    found
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("--version exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown version")
        .trim()
        .into())
}

/// One compiled kernel file.
struct Module {
    name: String,
    ptx: PathBuf,
    fatbin: PathBuf,
}

/// Compiles every `.cu` file on its own thread (nvcc is single-threaded; on CI's 2 cores the
/// wall time is about that of the largest file). Panics with nvcc's full output on failure.
fn compile_all(nvcc: &Path, sources: &[PathBuf], out_dir: &Path) -> Vec<Module> {
    let results: Vec<Result<Module, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .filter(|p| is_cu(p))
            .map(|src| scope.spawn(move || compile_one(nvcc, src, out_dir)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("nvcc thread panicked"))
            .collect()
    });
    let mut modules = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(m) => modules.push(m),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        panic!("nvcc failed:\n{}", failures.join("\n\n"));
    }
    modules
}

fn compile_one(nvcc: &Path, src: &Path, out_dir: &Path) -> Result<Module, String> {
    let name = src
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 kernel file name");
    let ptx = out_dir.join(format!("{name}.ptx"));
    let fatbin = out_dir.join(format!("{name}.fatbin"));

    // The front end runs once, to PTX; ptxas then turns that PTX into the sm_90 cubin and the
    // fatbin carries both, so the native code and the interpreter's PTX cannot drift apart.
    let mut to_ptx = Command::new(nvcc);
    to_ptx
        .args([
            "-ptx",
            &format!("-arch={PTX_ARCH}"),
            "-std=c++17",
            "-lineinfo",
        ])
        .arg("-I")
        .arg(src.parent().expect("kernel folder"))
        .arg(src)
        .arg("-o")
        .arg(&ptx);
    run(&mut to_ptx)?;

    let mut to_fatbin = Command::new(nvcc);
    to_fatbin
        .args([
            "--fatbin",
            &format!("-arch={PTX_ARCH}"),
            &format!("-code={NATIVE_CODE},{PTX_ARCH}"),
        ])
        .arg(&ptx)
        .arg("-o")
        .arg(&fatbin);
    run(&mut to_fatbin)?;

    Ok(Module {
        name: name.to_string(),
        ptx,
        fatbin,
    })
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("{shown}: could not start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The Rust source included by `src/backend/cuda/kernels.rs`.
fn generated_rust(nvcc: Option<(&Path, &str)>, modules: &[Module]) -> String {
    let mut s = String::from("// Generated by build.rs; do not edit.\n\n");
    let (built, path, version) = match nvcc {
        Some((p, v)) => (true, p.display().to_string(), v.to_string()),
        None => (false, String::new(), String::new()),
    };
    writeln!(
        s,
        "/// Whether build.rs compiled the kernels (it found a working nvcc)."
    )
    .unwrap();
    writeln!(s, "pub const BUILT_WITH_NVCC: bool = {built};").unwrap();
    writeln!(s, "/// The nvcc that compiled the kernels (empty without).").unwrap();
    writeln!(s, "pub const NVCC_PATH: &str = {path:?};").unwrap();
    writeln!(s, "/// nvcc's release line (empty without).").unwrap();
    writeln!(s, "pub const NVCC_VERSION: &str = {version:?};").unwrap();
    writeln!(s, "/// Architecture of the embedded PTX.").unwrap();
    writeln!(s, "pub const PTX_ARCH: &str = {PTX_ARCH:?};").unwrap();
    writeln!(s, "/// Native code in each fatbin besides the PTX.").unwrap();
    writeln!(s, "pub const NATIVE_CODE: &str = {NATIVE_CODE:?};").unwrap();

    writeln!(s, "/// Every compiled kernel file (empty without nvcc).").unwrap();
    writeln!(s, "pub static MODULES: &[ModuleImage] = &[").unwrap();
    for m in modules {
        writeln!(
            s,
            "    ModuleImage {{ name: {:?}, ptx: include_str!({:?}), \
             fatbin: include_bytes!({:?}) }},",
            m.name,
            m.ptx.display().to_string(),
            m.fatbin.display().to_string()
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();

    writeln!(
        s,
        "/// `(module name, PTX text)` of every kernel file, exactly as built."
    )
    .unwrap();
    writeln!(s, "pub static PTX_MODULES: &[(&str, &str)] = &[").unwrap();
    for m in modules {
        writeln!(
            s,
            "    ({:?}, include_str!({:?})),",
            m.name,
            m.ptx.display().to_string()
        )
        .unwrap();
    }
    writeln!(s, "];").unwrap();
    s
}
