//! Pathfinder (Linsley et al. 2018, LRA's 32x32 image task), drawn from scratch.
//!
//! An image holds `2 + distractors` curved dashed contours that never come near one
//! another (every pixel of a contour is at least 4 pixels, in Chebyshev distance, from
//! every pixel of the others, so not even two markers touch) and two endpoint markers (3x3 squares). Label 1
//! (connected): the markers sit on the two ends of contour A. Label 0: one marker on an
//! end of A, the other on an end of B. Both classes draw the same number of contours of
//! the same length, so pixel counts carry no cue; the label is drawn uniformly.
//!
//! A contour is a walk of `path_len` steps of one pixel: it starts at a uniform point
//! with a uniform heading among 32, and turns by up to `max_turn` thirty-seconds of a
//! circle at each step. Positions are fixed-point integers (1/1024 pixel) and the 32
//! unit vectors are rounded to that grid, so the images are the same on every platform.
//! Dashes: `dash` steps drawn, `gap` steps left out, repeated. Pixels are 0 (background)
//! or 255, flattened row by row; token = pixel + 1 (id 0 is padding), so 257 ids.

use anyhow::{bail, ensure, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::synthetic::SYNTHETIC_SIZES;
use crate::task::{rng, uniform, Example, Sizes, Split, Task};

const ONE: i64 = 1024;
const DIRECTIONS: u32 = 32;

/// The pathfinder task's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pathfinder {
    /// Image side in pixels (default 32).
    pub size: u32,
    /// Steps (pixels) per contour (default 14).
    pub path_len: u32,
    /// Contours besides the two the markers use (default 2).
    pub distractors: u32,
    /// Largest turn per step, in 1/32 of a circle (default 1).
    pub max_turn: u32,
    /// Steps drawn per dash (default 3).
    pub dash: u32,
    /// Steps left out between dashes (default 2).
    pub gap: u32,
    pub sizes: Sizes,
}

impl Default for Pathfinder {
    fn default() -> Self {
        Pathfinder {
            size: 32,
            path_len: 14,
            distractors: 2,
            max_turn: 1,
            dash: 3,
            gap: 2,
            sizes: SYNTHETIC_SIZES,
        }
    }
}

/// The geometry of one image, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Each contour's pixels, one per step (`path_len + 1` points), 8-adjacent in turn.
    /// Contour 0 is A, contour 1 is B, the rest distractors.
    pub contours: Vec<Vec<(i32, i32)>>,
    /// Centres of the two markers.
    pub markers: [(i32, i32); 2],
    /// 1 when both markers are on contour A.
    pub label: u32,
}

fn unit_vectors() -> Vec<(i64, i64)> {
    (0..DIRECTIONS)
        .map(|k| {
            let a = k as f64 * std::f64::consts::TAU / DIRECTIONS as f64;
            (
                (a.cos() * ONE as f64).round() as i64,
                (a.sin() * ONE as f64).round() as i64,
            )
        })
        .collect()
}

impl Pathfinder {
    /// LRA's larger images (64x64, and 128x128 for Path-X): the 32x32 geometry scaled by
    /// `size / 32` (contour length, dash and gap), with as many more distractors, so the
    /// image stays as cluttered per contour length while the sequence grows 4x or 16x.
    pub fn scaled(size: u32, sizes: Sizes) -> Self {
        let base = Pathfinder::default();
        let k = (size / 32).max(1);
        Pathfinder {
            size,
            path_len: base.path_len * k,
            distractors: base.distractors * k,
            dash: base.dash * k,
            gap: base.gap * k,
            sizes,
            ..base
        }
    }

    /// Pixels of one contour, or None when it leaves the image (markers included) or
    /// comes within 3 pixels of `taken`.
    fn walk(
        &self,
        r: &mut ChaCha8Rng,
        dirs: &[(i64, i64)],
        taken: &[Vec<(i32, i32)>],
    ) -> Option<Vec<(i32, i32)>> {
        let lo = 1;
        let hi = self.size as i32 - 2; // markers (radius 1) stay inside
        let mut x = uniform(r, lo as u32, hi as u32 + 1) as i64 * ONE;
        let mut y = uniform(r, lo as u32, hi as u32 + 1) as i64 * ONE;
        let mut heading = uniform(r, 0, DIRECTIONS) as i64;
        let turns = 2 * self.max_turn + 1;
        let mut pts = Vec::with_capacity(self.path_len as usize + 1);
        for step in 0..=self.path_len {
            if step > 0 {
                heading += uniform(r, 0, turns) as i64 - self.max_turn as i64;
                let (dx, dy) = dirs[heading.rem_euclid(DIRECTIONS as i64) as usize];
                x += dx;
                y += dy;
            }
            let p = (
                (x + ONE / 2).div_euclid(ONE) as i32,
                (y + ONE / 2).div_euclid(ONE) as i32,
            );
            if p.0 < lo || p.0 > hi || p.1 < lo || p.1 > hi {
                return None;
            }
            let near = taken
                .iter()
                .flatten()
                .any(|q| (q.0 - p.0).abs() <= 3 && (q.1 - p.1).abs() <= 3);
            if near {
                return None;
            }
            pts.push(p);
        }
        Some(pts)
    }

    /// Draws one scene (retrying contours that leave the image or come too close).
    pub fn draw_scene(&self, r: &mut ChaCha8Rng) -> Result<Scene> {
        let dirs = unit_vectors();
        let label = uniform(r, 0, 2);
        let wanted = 2 + self.distractors as usize;
        for _attempt in 0..1000 {
            let mut contours: Vec<Vec<(i32, i32)>> = Vec::with_capacity(wanted);
            let mut tries = 0;
            while contours.len() < wanted && tries < 200 {
                tries += 1;
                if let Some(c) = self.walk(r, &dirs, &contours) {
                    contours.push(c);
                }
            }
            if contours.len() < wanted {
                continue;
            }
            let end = |c: &Vec<(i32, i32)>, last: bool| {
                if last {
                    *c.last().unwrap()
                } else {
                    c[0]
                }
            };
            let a_end = uniform(r, 0, 2) == 1;
            let other = if label == 1 {
                end(&contours[0], !a_end)
            } else {
                end(&contours[1], uniform(r, 0, 2) == 1)
            };
            let markers = [end(&contours[0], a_end), other];
            return Ok(Scene {
                contours,
                markers,
                label,
            });
        }
        bail!(
            "pathfinder: cannot fit {wanted} contours of {} steps in {}x{}",
            self.path_len,
            self.size,
            self.size
        )
    }

    /// The image of a scene, row by row, 0 or 255; dashed as the task shows it, or with
    /// every step drawn (for checking connectivity).
    pub fn render(&self, scene: &Scene, dashed: bool) -> Vec<u8> {
        let n = self.size as i32;
        let mut img = vec![0u8; (n * n) as usize];
        let period = (self.dash + self.gap) as usize;
        for c in &scene.contours {
            for (i, p) in c.iter().enumerate() {
                if !dashed || i % period < self.dash as usize {
                    img[(p.1 * n + p.0) as usize] = 255;
                }
            }
        }
        for m in scene.markers {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    img[((m.1 + dy) * n + m.0 + dx) as usize] = 255;
                }
            }
        }
        img
    }

    /// Whether the two markers are joined by lit pixels (8-connected) in `img`.
    pub fn markers_connected(&self, img: &[u8], markers: [(i32, i32); 2]) -> bool {
        let n = self.size as i32;
        let idx = |x: i32, y: i32| (y * n + x) as usize;
        let mut seen = vec![false; img.len()];
        let mut stack = vec![markers[0]];
        seen[idx(markers[0].0, markers[0].1)] = true;
        while let Some((x, y)) = stack.pop() {
            if (x, y) == markers[1] {
                return true;
            }
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (u, v) = (x + dx, y + dy);
                    if u < 0 || v < 0 || u >= n || v >= n {
                        continue;
                    }
                    let i = idx(u, v);
                    if img[i] > 0 && !seen[i] {
                        seen[i] = true;
                        stack.push((u, v));
                    }
                }
            }
        }
        false
    }

    fn example(&self, r: &mut ChaCha8Rng) -> Result<Example> {
        let scene = self.draw_scene(r)?;
        let tokens = self
            .render(&scene, true)
            .into_iter()
            .map(|p| p as u32 + 1)
            .collect();
        Ok(Example {
            tokens,
            label: scene.label,
        })
    }
}

impl Task for Pathfinder {
    fn name(&self) -> &'static str {
        "pathfinder"
    }
    fn vocab_size(&self) -> u32 {
        257
    }
    fn num_classes(&self) -> u32 {
        2
    }
    fn max_len(&self) -> usize {
        (self.size * self.size) as usize
    }
    fn sizes(&self) -> Sizes {
        self.sizes
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields")
    }
    fn validate(&self) -> Result<()> {
        ensure!(self.size >= 8, "size must be at least 8");
        ensure!(self.path_len >= 2, "path_len must be at least 2");
        ensure!(self.dash >= 1, "dash must be at least 1");
        ensure!(self.max_turn < DIRECTIONS / 2, "max_turn must be below 16");
        Ok(())
    }
    fn generate(&self, seed: u64) -> Result<Split> {
        self.validate()?;
        let part = |n: usize, stream: u64| -> Result<Vec<Example>> {
            let mut r = rng(seed, stream);
            (0..n).map(|_| self.example(&mut r)).collect()
        };
        Ok(Split {
            train: part(self.sizes.train, 0)?,
            valid: part(self.sizes.valid, 1)?,
            test: part(self.sizes.test, 2)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::label_counts;

    fn task() -> Pathfinder {
        Pathfinder {
            sizes: Sizes::new(600, 20, 20),
            ..Default::default()
        }
    }

    #[test]
    fn images_are_the_rendered_scenes_and_labels_mean_connection() {
        let t = task();
        let split = t.generate(5).unwrap();
        // Replay the train stream: every image is its scene rendered dashed, and the
        // label says whether the markers are joined once the contours are drawn whole.
        let mut r = rng(5, 0);
        for ex in &split.train {
            let scene = t.draw_scene(&mut r).unwrap();
            let img = t.render(&scene, true);
            let tokens: Vec<u32> = img.iter().map(|&p| p as u32 + 1).collect();
            assert_eq!(tokens, ex.tokens);
            assert_eq!(ex.tokens.len(), 32 * 32);
            assert_eq!(scene.label, ex.label);
            assert_eq!(scene.contours.len(), 4);
            for c in &scene.contours {
                assert_eq!(c.len(), 15);
                for w in c.windows(2) {
                    let (dx, dy) = (w[1].0 - w[0].0, w[1].1 - w[0].1);
                    assert!(dx.abs() <= 1 && dy.abs() <= 1, "a jump {w:?}");
                }
            }
            let whole = t.render(&scene, false);
            assert_eq!(
                t.markers_connected(&whole, scene.markers),
                ex.label == 1,
                "label {} but connection disagrees",
                ex.label
            );
            // The dashes really leave pixels out.
            let lit = |im: &[u8]| im.iter().filter(|&&p| p > 0).count();
            assert!(lit(&img) < lit(&whole));
        }
        let counts = label_counts(&split.train, 2);
        eprintln!("pathfinder train labels: {counts:?}");
        assert!(counts[0] > 240 && counts[1] > 240, "{counts:?}");
    }

    #[test]
    fn larger_images_are_drawn_and_labelled() {
        for size in [64, 128] {
            let t = Pathfinder::scaled(size, Sizes::new(40, 2, 2));
            let split = t.generate(4).unwrap();
            let mut r = rng(4, 0);
            for ex in &split.train {
                assert_eq!(ex.tokens.len(), (size * size) as usize);
                let scene = t.draw_scene(&mut r).unwrap();
                let whole = t.render(&scene, false);
                assert_eq!(t.markers_connected(&whole, scene.markers), ex.label == 1);
            }
            let counts = label_counts(&split.train, 2);
            assert!(counts[0] >= 8 && counts[1] >= 8, "{size}: {counts:?}");
        }
    }

    #[test]
    fn pathfinder_repeats_for_a_seed() {
        let t = Pathfinder {
            sizes: Sizes::new(50, 5, 5),
            ..Default::default()
        };
        let a = t.generate(1).unwrap();
        assert_eq!(a, t.generate(1).unwrap());
        assert_ne!(a.train, t.generate(2).unwrap().train);
    }

    #[test]
    fn connectivity_check_sees_a_gap() {
        let t = Pathfinder::default();
        let line: Vec<(i32, i32)> = (5..20).map(|x| (x, 10)).collect();
        let mut scene = Scene {
            contours: vec![line.clone()],
            markers: [(5, 10), (19, 10)],
            label: 1,
        };
        assert!(t.markers_connected(&t.render(&scene, false), scene.markers));
        // Break the line: no longer connected.
        scene.contours[0].retain(|p| p.0 != 12 && p.0 != 13);
        assert!(!t.markers_connected(&t.render(&scene, false), scene.markers));
    }

    #[test]
    fn crowded_images_are_refused() {
        let t = Pathfinder {
            size: 8,
            path_len: 30,
            distractors: 5,
            sizes: Sizes::new(1, 0, 0),
            ..Default::default()
        };
        assert!(t.generate(0).is_err());
    }
}
