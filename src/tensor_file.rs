//! safetensors files with a deterministic header, written straight to a stream.
//!
//! The safetensors crate writes its metadata map in `HashMap` order, which changes from one
//! process to the next, so two runs that end with the same weights would write different
//! files. Here tensors are sorted by name and metadata by key: the same tensors and metadata
//! always give the same bytes, which is what lets a resumed run be compared byte for byte with
//! an uninterrupted one. The output is plain safetensors (little-endian F32 tensors), read back
//! by the crate.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One F32 tensor to write: its bytes are the little-endian elements in row-major order.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// The entries in file order (by name).
fn sorted<'a>(entries: &[Entry<'a>]) -> Vec<Entry<'a>> {
    let mut out = entries.to_vec();
    out.sort_by(|a, b| a.name.cmp(b.name));
    out
}

/// The 8-byte header length followed by the JSON header, padded with spaces to a multiple of 8
/// as the crate does. Errors when two entries share a name or bytes do not fit a shape.
fn header(entries: &[Entry], metadata: &BTreeMap<String, String>) -> io::Result<Vec<u8>> {
    let invalid = |detail: String| io::Error::new(io::ErrorKind::InvalidInput, detail);
    let quote = |s: &str| serde_json::to_string(s).map_err(|e| invalid(e.to_string()));
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json += "\"__metadata__\":";
        json += &serde_json::to_string(metadata).map_err(|e| invalid(e.to_string()))?;
    }
    let mut offset = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if i > 0 && entries[i - 1].name == e.name {
            return Err(invalid(format!("tensor {:?} is listed twice", e.name)));
        }
        let elements: usize = e.shape.iter().product();
        if elements * 4 != e.bytes.len() {
            return Err(invalid(format!(
                "tensor {:?}: {} bytes for shape {:?}",
                e.name,
                e.bytes.len(),
                e.shape
            )));
        }
        if json.len() > 1 {
            json.push(',');
        }
        json += &format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            quote(e.name)?,
            // Compact like the safetensors crate's own writer: `[64,3,7,7]`.
            e.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(","),
            offset,
            offset + e.bytes.len()
        );
        offset += e.bytes.len();
    }
    json.push('}');
    let mut bytes = json.into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend(bytes);
    Ok(out)
}

/// Writes a safetensors file of `entries` and `metadata` to `w`.
pub fn write(
    w: &mut dyn Write,
    entries: &[Entry],
    metadata: &BTreeMap<String, String>,
) -> io::Result<()> {
    let entries = sorted(entries);
    w.write_all(&header(&entries, metadata)?)?;
    for e in &entries {
        w.write_all(e.bytes)?;
    }
    Ok(())
}

/// [`write()`] into memory.
pub fn to_bytes(entries: &[Entry], metadata: &BTreeMap<String, String>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write(&mut out, entries, metadata)?;
    Ok(out)
}

/// The tensors' bytes in file order, for a checksum of what [`write()`] puts after the header.
pub fn data_in_file_order<'a>(entries: &[Entry<'a>]) -> Vec<&'a [u8]> {
    sorted(entries).into_iter().map(|e| e.bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries<'a>(a: &'a [u8], b: &'a [u8]) -> Vec<Entry<'a>> {
        vec![
            Entry {
                name: "layer1.0.conv1.weight",
                shape: &[2, 1],
                bytes: a,
            },
            Entry {
                name: "bn1.bias",
                shape: &[1],
                bytes: b,
            },
        ]
    }

    #[test]
    fn same_input_same_bytes_and_the_crate_reads_it() {
        let a: Vec<u8> = bytemuck::cast_slice(&[1.5f32, -2.0]).to_vec();
        let b: Vec<u8> = bytemuck::cast_slice(&[0.25f32]).to_vec();
        let meta: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key{i}"), format!("value \"{i}\"\n")))
            .collect();
        let first = to_bytes(&entries(&a, &b), &meta).unwrap();
        let mut reversed = entries(&a, &b);
        reversed.reverse();
        assert_eq!(first, to_bytes(&reversed, &meta).unwrap());

        let file = safetensors::SafeTensors::deserialize(&first).unwrap();
        let t = file.tensor("layer1.0.conv1.weight").unwrap();
        assert_eq!(t.shape(), [2, 1]);
        assert_eq!(t.data(), &a[..]);
        assert_eq!(file.tensor("bn1.bias").unwrap().data(), &b[..]);
        let (_, header) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let read: BTreeMap<String, String> =
            header.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(read, meta);
        let data: Vec<u8> = data_in_file_order(&entries(&a, &b)).concat();
        assert_eq!(&first[first.len() - data.len()..], &data[..]);
    }

    #[test]
    fn bad_entries_are_refused() {
        let a = [0u8; 8];
        let mut e = entries(&a, &a[..4]);
        e[1].shape = &[3];
        assert!(to_bytes(&e, &BTreeMap::new()).is_err());
        e[1] = e[0];
        assert!(to_bytes(&e, &BTreeMap::new()).is_err());
    }
}
