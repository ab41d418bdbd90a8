//! PROVISIONAL stand-in for the data layer being written on branch `data`.
#![allow(missing_docs, dead_code)]
use crate::error::Result;
pub struct Normalize { pub mean: [f32; 3], pub std: [f32; 3] }
pub struct Dataset {
    pub label_names: Vec<String>,
    pub files: Vec<String>,
    pub labels: Option<Vec<u8>>,
    pub size: usize,
    pub pixels: Vec<u8>,
}
impl Dataset {
    pub fn len(&self) -> usize { self.files.len() }
    pub fn num_labels(&self) -> usize { self.label_names.len() }
    pub fn label_rows(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let l = self.num_labels();
        let labels = self.labels.as_ref().unwrap();
        Ok(idx.iter().flat_map(|&i| labels[i * l..(i + 1) * l].iter().map(|&v| v as f32)).collect())
    }
    pub fn batch_pixels(&self, idx: &[usize], n: &Normalize) -> Vec<f32> {
        let px = self.size * self.size * 3;
        let mut out = Vec::with_capacity(idx.len() * px);
        for &i in idx {
            for (j, &v) in self.pixels[i * px..(i + 1) * px].iter().enumerate() {
                out.push((v as f32 / 255.0 - n.mean[j % 3]) / n.std[j % 3]);
            }
        }
        out
    }
}
