//! The checkpoint file: read back exactly, and refused, never used, when torn or damaged.

use std::fs;

use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-ckpt-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn identity() -> Identity {
    Identity::new().with("seed", 0).with("image size", 16)
}

fn tensors() -> Vec<HostTensor> {
    vec![
        HostTensor {
            name: "model.b".into(),
            shape: vec![3],
            data: vec![1.0, f32::MIN_POSITIVE, -0.0],
        },
        HostTensor {
            name: "model.a".into(),
            shape: vec![2, 2],
            data: vec![0.1, 0.2, 0.3, 1e-30],
        },
    ]
}

/// A complete checkpoint at `path` with a small state.
fn write_good(path: &Path) {
    let manifest = json!({
        "kind": "train",
        "identity": identity().to_json(),
        "state": {"step": 7},
    });
    write_file(path, manifest, &tensors()).unwrap();
}

fn resume(path: &Path) -> Checkpointing {
    Checkpointing {
        path: path.into(),
        cadence: Cadence::Epoch,
        resume: true,
    }
}

fn refused(path: &Path) -> String {
    match CheckpointFile::read(path) {
        Err(e @ Error::Checkpoint { .. }) => e.to_string(),
        Err(e) => panic!("expected a checkpoint error, got {e}"),
        Ok(_) => panic!("a damaged checkpoint was accepted"),
    }
}

#[test]
fn reads_back_exactly() {
    let dir = scratch("exact");
    let path = dir.join("c.safetensors");
    write_good(&path);
    let file = CheckpointFile::read(&path).unwrap().unwrap();
    assert_eq!(file.state().get("step").unwrap().field().u64().unwrap(), 7);
    let backend: BackendHandle = std::sync::Arc::new(crate::backend::cpu::CpuBackend);
    for t in tensors() {
        let back = file.tensor(&t.name, &t.shape, &backend).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.to_vec().unwrap()), bits(&t.data), "{}", t.name);
    }
    assert!(
        file.tensor("model.a", &[4], &backend).is_err(),
        "shape checked"
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn torn_temporary_files_are_ignored_and_deleted() {
    let dir = scratch("torn-temp");
    let path = dir.join("c.safetensors");
    let leftover = dir.join(".c.safetensors.tmp-999999-0");

    // Only a torn temporary file: there is nothing to resume from.
    fs::write(&leftover, b"half a checkpoi").unwrap();
    let err = Saver::begin(&resume(&path), "train", identity())
        .err()
        .unwrap();
    assert!(matches!(err, Error::NoCheckpoint { .. }), "{err}");
    assert!(!leftover.exists(), "the torn temporary file is deleted");

    // A torn temporary file beside a complete checkpoint: the checkpoint is used.
    write_good(&path);
    fs::write(&leftover, b"half a checkpoi").unwrap();
    let (_, file) = Saver::begin(&resume(&path), "train", identity()).unwrap();
    let file = file.unwrap();
    assert_eq!(file.state().get("step").unwrap().field().u64().unwrap(), 7);
    assert!(!leftover.exists());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncated_files_are_refused() {
    let dir = scratch("truncated");
    let path = dir.join("c.safetensors");
    write_good(&path);
    let bytes = fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() - 9, 200, 9, 3, 0] {
        fs::write(&path, &bytes[..keep]).unwrap();
        let text = refused(&path);
        assert!(text.contains("not a complete"), "{keep} bytes: {text}");
    }
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn changed_bytes_and_torn_manifests_are_refused() {
    let dir = scratch("damaged");
    let path = dir.join("c.safetensors");
    write_good(&path);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    assert!(refused(&path).contains("checksum"));

    // A manifest cut short (valid safetensors around it).
    let t = tensors();
    let entries: Vec<Entry> = t
        .iter()
        .map(|t| Entry {
            name: &t.name,
            shape: &t.shape,
            bytes: bytemuck::cast_slice(&t.data),
        })
        .collect();
    let manifest = json!({"kind": "train", "identity": [], "state": {}, "crc32": 0}).to_string();
    for (format, version, manifest) in [
        (FORMAT, "1", &manifest[..manifest.len() / 2]),
        (FORMAT, "2", &manifest[..]),
        ("something-else", "1", &manifest[..]),
    ] {
        let meta = BTreeMap::from([
            ("format".to_string(), format.to_string()),
            ("version".to_string(), version.to_string()),
            ("manifest".to_string(), manifest.to_string()),
        ]);
        fs::write(&path, tensor_file::to_bytes(&entries, &meta).unwrap()).unwrap();
        let text = refused(&path);
        assert!(
            text.contains("torn") || text.contains("version") || text.contains("format"),
            "{text}"
        );
    }

    // A manifest whose state does not decode names the field.
    write_file(
        &path,
        json!({"kind": "train", "identity": identity().to_json(), "state": {"step": "x"}}),
        &t,
    )
    .unwrap();
    let file = CheckpointFile::read(&path).unwrap().unwrap();
    let err = file.state().get("step").unwrap().field().u64().unwrap_err();
    assert!(err.contains(".step"), "{err}");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn begin_refuses_overwrites_other_jobs_and_other_options() {
    let dir = scratch("begin");
    let path = dir.join("c.safetensors");
    write_good(&path);

    let fresh = Checkpointing {
        resume: false,
        ..resume(&path)
    };
    let err = Saver::begin(&fresh, "train", identity()).err().unwrap();
    assert!(matches!(err, Error::CheckpointExists { .. }), "{err}");
    assert!(err.to_string().contains("--resume"), "{err}");

    let err = Saver::begin(&resume(&path), "run", identity())
        .err()
        .unwrap();
    assert!(err.to_string().contains("checkpoint of `train`"), "{err}");

    let other = Identity::new().with("seed", 1).with("image size", 16);
    let err = Saver::begin(&resume(&path), "train", other).err().unwrap();
    match &err {
        Error::ResumeMismatch { differences, .. } => {
            assert_eq!(differences.len(), 1);
            assert_eq!(differences[0].option, "seed");
        }
        e => panic!("expected a mismatch, got {e}"),
    }
    assert!(err.to_string().contains("seed was 0, now 1"), "{err}");

    let more = identity().with("strategies", "random,entropy");
    let err = Saver::begin(&resume(&path), "train", more).err().unwrap();
    assert!(
        err.to_string().contains("strategies was (not recorded)"),
        "{err}"
    );

    // With checkpoints off a fresh job still refuses to overwrite; without a checkpoint it
    // reads nothing.
    let off = Checkpointing {
        cadence: Cadence::Off,
        resume: false,
        ..resume(&path)
    };
    let err = Saver::begin(&off, "train", identity()).err().unwrap();
    assert!(matches!(err, Error::CheckpointExists { .. }), "{err}");
    fs::remove_file(&path).unwrap();
    assert!(Saver::begin(&off, "train", identity()).unwrap().1.is_none());
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn cadences_parse_and_fall_due() {
    assert_eq!("off".parse::<Cadence>().unwrap(), Cadence::Off);
    assert_eq!("epoch".parse::<Cadence>().unwrap(), Cadence::Epoch);
    assert_eq!("25".parse::<Cadence>().unwrap(), Cadence::Steps(25));
    assert_eq!("90s".parse::<Cadence>().unwrap(), Cadence::Seconds(90.0));
    assert_eq!("2m".parse::<Cadence>().unwrap(), Cadence::Seconds(120.0));
    for bad in ["0", "-3", "fast", "xs", "-1m", "NaNs", ""] {
        assert!(bad.parse::<Cadence>().is_err(), "{bad:?}");
    }

    let saver = |cadence| Saver {
        path: PathBuf::new(),
        cadence,
        kind: "train",
        identity: Identity::new(),
        last_save: Instant::now(),
        pretrained_crc: None,
    };
    let steps = saver(Cadence::Steps(4));
    assert!(!steps.due(Boundary::Step(3)) && steps.due(Boundary::Step(8)));
    assert!(steps.due(Boundary::EpochEnd) && steps.due(Boundary::Round));
    let epoch = saver(Cadence::Epoch);
    assert!(!epoch.due(Boundary::Step(4)) && epoch.due(Boundary::EpochEnd));
    assert!(!saver(Cadence::Off).due(Boundary::Round));
    assert!(saver(Cadence::Seconds(0.0)).due(Boundary::Step(1)));
    assert!(!saver(Cadence::Seconds(3600.0)).due(Boundary::EpochEnd));
}
