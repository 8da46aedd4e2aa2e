//! Block-sparse attention: each query block attends to a chosen list of key blocks, plus
//! optionally a set of global key positions shared by every block, with a position-level
//! mask over what was gathered. The score tensor is [blocks, b, s * b + g]: it grows with
//! N times the pattern's width, never N x N. Fixed and combined patterns (blockwise,
//! BigBird, Longformer) are lists of blocks and a mask; the pattern is built once per
//! shape, on the CPU, from positions.

use tch::{Device, Kind, Tensor};

use crate::flops::{self, FlopCount};
use crate::fused::{block_softmax, Backends, BlockMask};

/// A block-sparse pattern for one sequence length, ready to apply.
pub struct BlockPattern {
    n: i64,
    block: i64,
    blocks: i64,
    /// Key blocks per query block (s).
    slots: i64,
    /// `[blocks * slots]`: indices into the padded key blocks; `blocks` names the empty
    /// block (all zeros, always hidden) that pads short lists.
    key_blocks: Tensor,
    /// Global key positions appended to every query block's keys (g).
    globals: Option<Tensor>,
    /// `[1, blocks, b, slots * b + g]`, true where a key is attended, on the CPU: the
    /// pattern itself, for [`BlockPattern::dense_hidden`].
    visible: Tensor,
    /// The same, as the fused kernel takes it (built once, see [`crate::fused`]).
    mask: BlockMask,
    backends: Backends,
}

/// What a pattern says about one (query, key) pair of positions, beyond the block lists.
pub trait PairRule {
    /// Whether query `i` may see key `j` (both < N) when `j` came from a block list.
    fn visible(&self, i: i64, j: i64) -> bool;
}

/// Every pair in the listed blocks is visible.
pub struct WholeBlocks;

impl PairRule for WholeBlocks {
    fn visible(&self, _: i64, _: i64) -> bool {
        true
    }
}

impl BlockPattern {
    /// Block-diagonal: each block of `block` tokens attends within itself.
    pub fn block_diagonal(n: i64, block: i64, causal: bool, opts: (Kind, Device)) -> BlockPattern {
        let blocks = (n + block - 1) / block;
        let lists: Vec<Vec<i64>> = (0..blocks).map(|q| vec![q]).collect();
        BlockPattern::new(n, block, &lists, &[], causal, &WholeBlocks, opts)
    }

    /// Builds the pattern: `lists[q]` are the key blocks of query block `q` (duplicates
    /// are attended once), `globals` are key positions every query sees (a global key
    /// that also lies in a listed block is attended once, as a global). Keys past N, in
    /// the future (causal), or refused by `rule` are hidden. A query that would see
    /// nothing (only padding queries can) sees the empty block, so softmax stays finite.
    /// `opts`: the computation's dtype and device.
    pub fn new(
        n: i64,
        block: i64,
        lists: &[Vec<i64>],
        globals: &[i64],
        causal: bool,
        rule: &dyn PairRule,
        opts: (Kind, Device),
    ) -> BlockPattern {
        let (kind, device) = opts;
        let blocks = lists.len() as i64;
        assert_eq!(blocks, (n + block - 1) / block, "one list per query block");
        let slots = lists.iter().map(|l| l.len()).max().unwrap_or(0).max(1) as i64;
        let g = globals.len() as i64;
        let width = (slots * block + g) as usize;
        let mut global_key = vec![false; n.max(0) as usize];
        for &j in globals {
            if (0..n).contains(&j) {
                global_key[j as usize] = true;
            }
        }
        let is_global = |j: i64| j < n && global_key[j as usize];
        let mut key_blocks = vec![blocks; (blocks * slots) as usize];
        let mut hidden = vec![true; (blocks * block) as usize * width];
        for (qb, list) in lists.iter().enumerate() {
            let mut seen = Vec::new();
            for (slot, &kb) in list.iter().enumerate() {
                if seen.contains(&kb) || kb < 0 || kb >= blocks {
                    continue;
                }
                seen.push(kb);
                key_blocks[qb * slots as usize + slot] = kb;
                for r in 0..block {
                    let i = qb as i64 * block + r;
                    for c in 0..block {
                        let j = kb * block + c;
                        let ok = i < n
                            && j < n
                            && !(causal && j > i)
                            && !is_global(j)
                            && rule.visible(i, j);
                        let col = slot as i64 * block + c;
                        hidden[(i as usize) * width + col as usize] = !ok;
                    }
                }
            }
            for r in 0..block {
                let i = qb as i64 * block + r;
                for (gi, &j) in globals.iter().enumerate() {
                    let ok = i < n && !(causal && j > i);
                    let col = (slots * block) as usize + gi;
                    hidden[(i as usize) * width + col] = !ok;
                }
            }
        }
        // Padding queries that see nothing get the (zero) first key of their first slot.
        for row in hidden.chunks_mut(width) {
            if row.iter().all(|&h| h) {
                row[0] = false;
            }
        }
        let visible =
            Tensor::from_slice(&hidden)
                .logical_not()
                .view([1, blocks, block, width as i64]);
        let live = Tensor::arange(blocks * block, (Kind::Int64, Device::Cpu))
            .lt(n)
            .view([blocks, block]);
        let mask = BlockMask::new(&visible, Some(&live), kind, device);
        let key_blocks = Tensor::from_slice(&key_blocks).to_device(device);
        let globals = (!globals.is_empty()).then(|| Tensor::from_slice(globals).to_device(device));
        BlockPattern {
            n,
            block,
            blocks,
            slots,
            key_blocks,
            globals,
            visible,
            mask,
            backends: Backends::default(),
        }
    }

    /// How the pattern reaches SDPA.
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    /// The SDPA backends the pattern's calls took so far.
    pub fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    fn gather(&self, x: &Tensor) -> Tensor {
        let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        let padded = self.blocks * self.block;
        // Pad to whole blocks plus one empty block, the target of unused slots.
        let x = x.constant_pad_nd([0, 0, 0, padded - n + self.block]).view([
            b,
            h,
            self.blocks + 1,
            self.block,
            d,
        ]);
        let mut keys = x.index_select(2, &self.key_blocks).view([
            b,
            h,
            self.blocks,
            self.slots * self.block,
            d,
        ]);
        if let Some(g) = &self.globals {
            let flat = x.view([b, h, (self.blocks + 1) * self.block, d]);
            let shared = flat
                .index_select(2, g)
                .unsqueeze(2)
                .expand([b, h, self.blocks, g.size()[0], d], false);
            keys = Tensor::cat(&[keys, shared], 3);
        }
        keys
    }

    /// Softmax attention of every query over its pattern; `[b, h, N, d]` in and out.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        assert_eq!(n, self.n, "built for N = {}", self.n);
        let padded = self.blocks * self.block;
        let q = q
            .constant_pad_nd([0, 0, 0, padded - n])
            .view([b, h, self.blocks, self.block, d]);
        let (k, v) = (self.gather(k), self.gather(v));
        block_softmax(&q, &k, &v, &self.mask, &self.backends)
            .view([b, h, padded, d])
            .narrow(2, 0, n)
    }

    /// The dense pattern, `[N, N]`, true where hidden: for tests and documentation only.
    pub fn dense_hidden(&self) -> Tensor {
        let (n, b, s) = (self.n, self.block, self.slots);
        let width = self.width();
        let hidden = self.visible.get(0).logical_not();
        let key_blocks = Vec::<i64>::try_from(&self.key_blocks.to_device(Device::Cpu)).unwrap();
        let globals = self
            .globals
            .as_ref()
            .map(|g| Vec::<i64>::try_from(&g.to_device(Device::Cpu)).unwrap())
            .unwrap_or_default();
        let mut dense = vec![true; (n * n) as usize];
        for i in 0..n {
            let qb = i / b;
            let row = hidden.get(qb).get(i % b);
            let row = Vec::<bool>::try_from(&row).unwrap();
            for col in 0..width {
                if row[col as usize] {
                    continue;
                }
                let j = if col < s * b {
                    key_blocks[(qb * s + col / b) as usize] * b + col % b
                } else {
                    globals[(col - s * b) as usize]
                };
                if j < n {
                    dense[(i * n + j) as usize] = false;
                }
            }
        }
        Tensor::from_slice(&dense).view([n, n])
    }

    /// Scores computed per head: every gathered entry, hidden or not.
    pub fn flops(&self, bh: u64, head_dim: i64) -> FlopCount {
        let rows = (self.blocks * self.block) as u64;
        let cols = self.width() as u64;
        let d = head_dim as u64;
        FlopCount::forward(flops::matmul(bh, rows, d, cols) + flops::matmul(bh, rows, cols, d))
    }

    /// Keys each query block sees (s * b + g).
    pub fn width(&self) -> i64 {
        self.visible.size()[3]
    }
}

/// Exact rows for a few global query positions, which attend to every key (earlier keys,
/// when causal): the global tokens of Longformer and BigBird. The block pattern computes
/// every row; these rows then replace theirs.
pub struct GlobalQueries {
    rows: Option<Tensor>,
    count: i64,
    /// `[g, N]`: the keys after each global query, when causal.
    future: Option<Tensor>,
}

impl GlobalQueries {
    pub fn new(positions: &[i64], n: i64, causal: bool, device: Device) -> GlobalQueries {
        let future = (causal && !positions.is_empty()).then(|| {
            let r = Tensor::from_slice(positions).view([positions.len() as i64, 1]);
            let j = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
            j.gt_tensor(&r).to_device(device)
        });
        GlobalQueries {
            rows: (!positions.is_empty()).then(|| Tensor::from_slice(positions).to_device(device)),
            count: positions.len() as i64,
            future,
        }
    }

    /// `out` with the global queries' rows replaced by exact attention.
    pub fn apply(&self, out: Tensor, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let Some(rows) = &self.rows else {
            return out;
        };
        let y = crate::exact::vanilla::softmax_attention(
            &q.index_select(2, rows),
            k,
            v,
            self.future.as_ref(),
        );
        out.index_copy(2, rows, &y)
    }

    /// The global rows' products: g x N scores and the weighted sum, per head.
    pub fn flops(&self, bh: u64, n: i64, head_dim: i64) -> FlopCount {
        let (g, n, d) = (self.count as u64, n as u64, head_dim as u64);
        FlopCount::forward(flops::matmul(bh, g, d, n) + flops::matmul(bh, g, n, d))
    }
}
