//! `axial`: axial attention (Ho et al. 2019). The sequence is laid out as a grid of
//! r x c tokens (r = ceil(N / c), c = ceil(sqrt(N)) by default) and every query attends
//! along its row and, separately, along its column; the two outputs are summed, as the
//! widely used axial-attention implementations do for one layer. Causal (the Axial
//! Transformer's masked form): along a row a query sees the columns up to its own, along a
//! column the rows up to its own. Time O(N (r + c) d), memory O(N (r + c)):
//! O(N sqrt(N)) on a square grid. Rows and columns each go through the shared fused
//! kernel (`variants/src/fused.rs`) as blocks.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::{block_softmax, Backends, BlockMask};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Grid width c (tokens per row); 0 picks ceil(sqrt(N)).
    pub width: i64,
}

pub struct Axial {
    shape: Shape,
    rows: i64,
    cols: i64,
    /// `[1, r, c, c]` / `[1, c, r, r]`: keys attended along a row / a column (not
    /// padding; not the future when causal). Padding ends the last row and the last
    /// column's tail, so neither is ever a mask (see [`crate::fused::BlockMask`]).
    row_mask: BlockMask,
    col_mask: BlockMask,
    backends: Backends,
}

impl Axial {
    pub fn grid(&self) -> (i64, i64) {
        (self.rows, self.cols)
    }

    /// How the row and the column patterns reach SDPA (for tests).
    pub fn masks(&self) -> (&BlockMask, &BlockMask) {
        (&self.row_mask, &self.col_mask)
    }
}

impl AttentionVariant for Axial {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "axial",
        family: Family::CombinedPatterns,
        time: "O(N (r + c) d); O(N sqrt(N) d) square",
        memory: "O(N (r + c)); O(N sqrt(N)) square",
        time_exponent: 1.5,
        memory_exponent: 1.5,
        paper: "Ho et al. 2019, Axial Attention in Multidimensional Transformers \
                (arXiv:1912.12180)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        if config.width < 0 {
            return Err(VariantError::config(
                "axial",
                format!("width must be >= 0 (0: sqrt(N)), got {}", config.width),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let cols = if config.width == 0 {
            (n as f64).sqrt().ceil() as i64
        } else {
            config.width
        }
        .clamp(1, n);
        let rows = (n + cols - 1) / cols;
        let opts = (Kind::Int64, tch::Device::Cpu);
        let pos = Tensor::arange(rows, opts).view([rows, 1]) * cols
            + Tensor::arange(cols, opts).view([1, cols]);
        let pad = pos.ge(n);
        // Along an axis of length m, key j is in the future of query i when j > i.
        let future = |m: i64| {
            let t = Tensor::arange(m, opts);
            let f = t.view([1, m]).gt_tensor(&t.view([m, 1]));
            if shape.causal {
                f
            } else {
                f.zeros_like()
            }
        };
        // [rows, 1, cols] padding with [cols, cols] future; likewise along columns.
        let row_visible = pad
            .view([rows, 1, cols])
            .logical_or(&future(cols).unsqueeze(0))
            .logical_not()
            .unsqueeze(0);
        let col_visible = pad
            .transpose(0, 1)
            .contiguous()
            .view([cols, 1, rows])
            .logical_or(&future(rows).unsqueeze(0))
            .logical_not()
            .unsqueeze(0);
        let live = pad.logical_not();
        let live_t = live.transpose(0, 1).contiguous();
        let (kind, device) = (vs.kind(), vs.device());
        Ok(Axial {
            shape: *shape,
            rows,
            cols,
            row_mask: BlockMask::new(&row_visible, Some(&live), kind, device),
            col_mask: BlockMask::new(&col_visible, Some(&live_t), kind, device),
            backends: Backends::default(),
        })
    }
}

impl Attention for Axial {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let (r, c) = (self.rows, self.cols);
        let grid = |t: &Tensor| {
            t.constant_pad_nd([0, 0, 0, r * c - n])
                .view([b, h, r, c, d])
        };
        let (q, k, v) = (grid(q), grid(k), grid(v));
        let along_rows = block_softmax(&q, &k, &v, &self.row_mask, &self.backends);
        let cols = |t: &Tensor| t.transpose(2, 3);
        let along_cols = block_softmax(
            &cols(&q),
            &cols(&k),
            &cols(&v),
            &self.col_mask,
            &self.backends,
        )
        .transpose(2, 3);
        (along_rows + along_cols)
            .reshape([b, h, r * c, d])
            .narrow(2, 0, n)
    }

    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (r, c, d) = (self.rows as u64, self.cols as u64, s.head_dim as u64);
        let rows = flops::matmul(s.bh() * r, c, d, c) + flops::matmul(s.bh() * r, c, c, d);
        let cols = flops::matmul(s.bh() * c, r, d, r) + flops::matmul(s.bh() * c, r, r, d);
        FlopCount::forward(rows + cols)
    }
}
