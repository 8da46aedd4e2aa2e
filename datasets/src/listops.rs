//! ListOps (Nangia & Bowman 2018, as generated for the Long Range Arena).
//!
//! A tree of operators over digits 0-9: `MIN`, `MAX`, `MED` (the integer part of the
//! median; the mean of the two middle values, truncated, for an even count) and `SM`
//! (sum mod 10). Below the root, a node is an operator with probability 1/4 and a digit
//! otherwise; the root is always an operator (LRA draws it like any node, but a digit
//! root has length 1 and is never kept by the length filter, so forcing it changes
//! nothing in what is kept); at the maximum depth (10) every node is a digit. An
//! operator takes 2 to `max_args` (10) arguments, uniformly. A tree is kept when its
//! length (digits, operators and closing brackets) is strictly between `min_length` and
//! `max_length` (LRA: 500 and 2000), and when it was not drawn before. Splits are
//! 96,000 / 2,000 / 2,000 by default, in order of generation.
//!
//! LRA writes a tree as `( ( [MAX 2 ) 9 ) ] )`-style text. The tokens here are
//! `[MAX 2 9 ]`, parentheses dropped and `]` its own symbol: a deliberate difference from
//! LRA, whose input pipeline (tfds's `Tokenizer` with its default `alphanum_only`) splits
//! on every non-word character and so drops `[` and `]` too: LRA's models saw
//! `MAX 2 9 MIN 4 7 0`, where a tree's shape is ambiguous. Keeping `]` makes the task
//! well-posed (later work such as S4 does the same); [`Tokens::Lra`] (the task parameter
//! `tokens=lra`) gives LRA's exact tokens, to compare accuracy with LRA's like for like.
//! Ids: 0 padding, 1-10 the digits 0-9, 11 `[MIN`, 12 `[MAX`, 13 `[MED`, 14 `[SM`, 15 `]`.
//! The label is the tree's value (ten classes).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{bail, ensure, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::task::{rng, uniform, Example, Sizes, Split, Task};

/// The four operators, in token order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Min,
    Max,
    Med,
    SumMod,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::SumMod];

    pub fn token(self) -> u32 {
        match self {
            Op::Min => 11,
            Op::Max => 12,
            Op::Med => 13,
            Op::SumMod => 14,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::SumMod => "[SM",
        }
    }

    /// The operator applied to digits (at least one).
    pub fn apply(self, args: &[u32]) -> u32 {
        assert!(!args.is_empty(), "an operator without arguments");
        match self {
            Op::Min => *args.iter().min().unwrap(),
            Op::Max => *args.iter().max().unwrap(),
            Op::SumMod => args.iter().sum::<u32>() % 10,
            Op::Med => {
                let mut v = args.to_vec();
                v.sort_unstable();
                let n = v.len();
                if n % 2 == 1 {
                    v[n / 2]
                } else {
                    // int(np.median): the mean of the middle two, truncated.
                    (v[n / 2 - 1] + v[n / 2]) / 2
                }
            }
        }
    }
}

/// Token id of digit `d`.
pub fn digit_token(d: u32) -> u32 {
    debug_assert!(d < 10);
    d + 1
}

/// The closing bracket.
pub const END: u32 = 15;
/// Ids are below this.
pub const VOCAB_SIZE: u32 = 16;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Digit(u32),
    Apply(Op, Vec<Node>),
}

impl Node {
    /// The expression's value.
    pub fn value(&self) -> u32 {
        match self {
            Node::Digit(d) => *d,
            Node::Apply(op, args) => {
                let vals: Vec<u32> = args.iter().map(Node::value).collect();
                op.apply(&vals)
            }
        }
    }

    /// Depth, the root at depth 1.
    pub fn depth(&self) -> usize {
        match self {
            Node::Digit(_) => 1,
            Node::Apply(_, args) => 1 + args.iter().map(Node::depth).max().unwrap_or(0),
        }
    }

    /// The smallest and largest argument count of any operator (None for a digit).
    pub fn arg_range(&self) -> Option<(usize, usize)> {
        match self {
            Node::Digit(_) => None,
            Node::Apply(_, args) => {
                let mut lo = args.len();
                let mut hi = args.len();
                for a in args {
                    if let Some((l, h)) = a.arg_range() {
                        lo = lo.min(l);
                        hi = hi.max(h);
                    }
                }
                Some((lo, hi))
            }
        }
    }
}

/// Parses a whole token sequence into one expression; errors on anything left over,
/// an unclosed operator, an operator without arguments or an unknown id.
pub fn parse(tokens: &[u32]) -> Result<Node> {
    fn node(tokens: &[u32], pos: &mut usize) -> Result<Node> {
        let Some(&t) = tokens.get(*pos) else {
            bail!("sequence ends where an expression should start");
        };
        *pos += 1;
        match t {
            1..=10 => Ok(Node::Digit(t - 1)),
            11..=14 => {
                let op = Op::ALL[(t - 11) as usize];
                let mut args = Vec::new();
                loop {
                    match tokens.get(*pos) {
                        None => bail!("unclosed {}", op.symbol()),
                        Some(&END) => {
                            *pos += 1;
                            break;
                        }
                        Some(_) => args.push(node(tokens, pos)?),
                    }
                }
                ensure!(!args.is_empty(), "{} without arguments", op.symbol());
                Ok(Node::Apply(op, args))
            }
            END => bail!("unexpected ] at {}", *pos - 1),
            _ => bail!("unknown token id {t} at {}", *pos - 1),
        }
    }
    let mut pos = 0;
    let root = node(tokens, &mut pos)?;
    ensure!(
        pos == tokens.len(),
        "{} tokens after the expression",
        tokens.len() - pos
    );
    Ok(root)
}

/// Tokens of LRA's text form (`( ( [MAX 2 ) 9 ) ] )` or `[MAX 2 9 ]`): whitespace-split,
/// parentheses dropped, as LRA's input pipeline reads its ListOps files.
pub fn tokenize(text: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let t = match word {
            "(" | ")" => continue,
            "]" => END,
            "[MIN" => Op::Min.token(),
            "[MAX" => Op::Max.token(),
            "[MED" => Op::Med.token(),
            "[SM" => Op::SumMod.token(),
            w => match w.parse::<u32>() {
                Ok(d) if d < 10 => digit_token(d),
                _ => bail!("unknown ListOps symbol {w:?}"),
            },
        };
        out.push(t);
    }
    Ok(out)
}

/// The text of a token sequence (`[MAX 2 9 ]`), parentheses left out.
pub fn to_text(tokens: &[u32]) -> String {
    let words: Vec<String> = tokens
        .iter()
        .map(|&t| match t {
            1..=10 => (t - 1).to_string(),
            11..=14 => Op::ALL[(t - 11) as usize].symbol().to_string(),
            END => "]".to_string(),
            _ => format!("<{t}>"),
        })
        .collect();
    words.join(" ")
}

/// How a tree becomes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tokens {
    /// `[MAX 2 9 ]`: every closing bracket a token, so the tree can be read back.
    #[default]
    Brackets,
    /// LRA's exact input: the same trees with the closing brackets left out (`MAX 2 9`).
    Lra,
}

impl Tokens {
    fn is_default(&self) -> bool {
        *self == Tokens::default()
    }
}

/// The ListOps task's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOps {
    /// Kept trees are strictly longer than this (LRA: 500).
    pub min_length: usize,
    /// ... and strictly shorter than this (LRA: 2000).
    pub max_length: usize,
    /// Depth of the deepest digits; the root is at depth 1 (LRA: 10).
    pub max_depth: usize,
    /// Arguments per operator: 2 to this (LRA: 10).
    pub max_args: u32,
    pub sizes: Sizes,
    /// Brackets (default) or LRA's tokens. Trees are drawn, filtered by length (counting
    /// the closing brackets, as LRA does) and deduplicated the same way for both.
    /// Left out of the parameters when default, so the data cache's key is unchanged.
    #[serde(default, skip_serializing_if = "Tokens::is_default")]
    pub tokens: Tokens,
}

impl Default for ListOps {
    fn default() -> Self {
        ListOps {
            min_length: 500,
            max_length: 2000,
            max_depth: 10,
            max_args: 10,
            sizes: Sizes::new(96_000, 2_000, 2_000),
            tokens: Tokens::Brackets,
        }
    }
}

impl ListOps {
    /// LRA's parameters with smaller splits.
    pub fn with_sizes(sizes: Sizes) -> Self {
        ListOps {
            sizes,
            ..Default::default()
        }
    }

    /// Draws one subtree at `depth` into `out`, returning its value, or None once `out`
    /// reaches `max_length` (the tree is then too long and dropped; stopping early keeps
    /// a rare huge tree from costing time and memory).
    fn draw(&self, r: &mut ChaCha8Rng, depth: usize, out: &mut Vec<u32>) -> Option<u32> {
        if out.len() >= self.max_length {
            return None;
        }
        let operator = depth == 1 || (depth < self.max_depth && uniform(r, 0, 4) == 0);
        if !operator {
            let d = uniform(r, 0, 10);
            out.push(digit_token(d));
            return Some(d);
        }
        let op = Op::ALL[uniform(r, 0, 4) as usize];
        out.push(op.token());
        let n = uniform(r, 2, self.max_args + 1);
        let mut vals = Vec::with_capacity(n as usize);
        for _ in 0..n {
            vals.push(self.draw(r, depth + 1, out)?);
        }
        out.push(END);
        Some(op.apply(&vals))
    }

    /// One tree of any length (for tests and inspection): tokens and value, or None when
    /// it reached `max_length`.
    pub fn draw_tree(&self, r: &mut ChaCha8Rng) -> Option<(Vec<u32>, u32)> {
        let mut out = Vec::new();
        let v = self.draw(r, 1, &mut out)?;
        Some((out, v))
    }
}

impl Task for ListOps {
    fn name(&self) -> &'static str {
        "listops"
    }
    fn vocab_size(&self) -> u32 {
        VOCAB_SIZE
    }
    fn num_classes(&self) -> u32 {
        10
    }
    fn max_len(&self) -> usize {
        self.max_length - 1
    }
    fn sizes(&self) -> Sizes {
        self.sizes
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields")
    }
    fn validate(&self) -> Result<()> {
        ensure!(self.max_depth >= 2, "max_depth must be at least 2");
        ensure!(self.max_args >= 2, "max_args must be at least 2");
        ensure!(
            self.min_length + 1 < self.max_length,
            "no length lies strictly between min_length {} and max_length {}",
            self.min_length,
            self.max_length
        );
        // The longest tree possible: every node above max_depth an operator with
        // max_args arguments.
        let mut longest: u128 = 1;
        for _ in 1..self.max_depth {
            longest = (2 + self.max_args as u128 * longest).min(u64::MAX as u128);
        }
        ensure!(
            longest > self.min_length as u128,
            "no tree of depth {} with {} arguments is longer than min_length {}",
            self.max_depth,
            self.max_args,
            self.min_length
        );
        Ok(())
    }

    fn generate(&self, seed: u64) -> Result<Split> {
        self.validate()?;
        let total = self.sizes.total();
        let mut r = rng(seed, 0);
        let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(total);
        let mut all: Vec<Example> = Vec::with_capacity(total);
        // Enough for LRA's settings many times over; a bound so that parameters whose
        // trees are almost never in range (or too few distinct) end with an error.
        let max_draws = 1_000 * total as u64 + 1_000_000;
        let mut draws = 0u64;
        while all.len() < total {
            draws += 1;
            if draws > max_draws {
                bail!(
                    "listops: only {} of {} distinct trees within ({}, {}) after {} draws",
                    all.len(),
                    total,
                    self.min_length,
                    self.max_length,
                    max_draws
                );
            }
            let Some((tokens, label)) = self.draw_tree(&mut r) else {
                continue;
            };
            if tokens.len() <= self.min_length || tokens.len() >= self.max_length {
                continue;
            }
            // Duplicates by a hash, confirmed on the tokens: no second copy of each tree.
            let mut h = DefaultHasher::new();
            tokens.hash(&mut h);
            let same = seen.entry(h.finish()).or_default();
            if same.iter().all(|&i| all[i].tokens != tokens) {
                same.push(all.len());
                all.push(Example { tokens, label });
            }
        }
        if self.tokens == Tokens::Lra {
            for ex in &mut all {
                ex.tokens.retain(|&t| t != END);
            }
        }
        Ok(Split::from_sizes(all, self.sizes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::label_counts;
    use std::collections::HashSet;

    fn small() -> ListOps {
        ListOps {
            min_length: 30,
            max_length: 120,
            sizes: Sizes::new(300, 50, 50),
            ..Default::default()
        }
    }

    #[test]
    fn evaluator_on_hand_written_expressions() {
        let cases = [
            ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
            ("[MIN 4 7 ]", 4),
            ("[MED 1 2 3 4 ]", 2), // median 2.5, truncated
            ("[MED 3 9 5 ]", 5),
            ("[MED 8 9 ]", 8), // 8.5 -> 8
            ("[SM 5 6 7 ]", 8),
            ("[SM 9 [MAX 1 2 ] [MED 0 0 9 ] ]", 1),
            ("( ( ( [MAX 2 ) 9 ) ] )", 9), // LRA's text with parentheses
        ];
        for (text, want) in cases {
            let tokens = tokenize(text).unwrap();
            assert_eq!(parse(&tokens).unwrap().value(), want, "{text}");
        }
        assert_eq!(
            to_text(&tokenize("( ( [SM 1 ) 2 ) ] )").unwrap()),
            "[SM 1 2 ]"
        );
    }

    #[test]
    fn parser_refuses_broken_sequences() {
        for text in ["[MAX 2 9", "[MAX ]", "[MIN 1 2 ] 3", "] 1", "[MAX 2 10 ]"] {
            let parsed = tokenize(text).and_then(|t| parse(&t));
            assert!(parsed.is_err(), "{text} accepted");
        }
    }

    /// Every kept tree: label = its value recomputed from the tokens; length strictly in
    /// bounds; depth within max_depth; 2..max_args arguments; an operator at the root;
    /// ids within the vocabulary; no tree twice across the splits.
    fn check(task: &ListOps, split: &Split) {
        assert_eq!(split.sizes(), task.sizes);
        let mut seen = HashSet::new();
        for (name, part) in split.parts() {
            for ex in part {
                let n = ex.tokens.len();
                assert!(
                    n > task.min_length && n < task.max_length,
                    "{name}: length {n}"
                );
                assert!(ex.tokens.iter().all(|&t| t > 0 && t < VOCAB_SIZE));
                let tree = parse(&ex.tokens).unwrap();
                assert_eq!(tree.value(), ex.label, "{name}: {}", to_text(&ex.tokens));
                assert!(tree.depth() <= task.max_depth, "depth {}", tree.depth());
                let (lo, hi) = tree.arg_range().expect("an operator at the root");
                assert!(lo >= 2 && hi <= task.max_args as usize, "{lo}..{hi}");
                assert!(seen.insert(ex.tokens.clone()), "a tree twice");
            }
        }
    }

    #[test]
    fn small_trees_are_valid_distinct_and_repeat() {
        let task = small();
        let a = task.generate(11).unwrap();
        check(&task, &a);
        assert_eq!(a, task.generate(11).unwrap());
        assert_ne!(a.train, task.generate(12).unwrap().train);
    }

    /// `tokens=lra` gives the same trees and labels with every `]` left out, as LRA's
    /// tokenizer reads its files (only words: `MAX 2 9 MIN 4 7 0`).
    #[test]
    fn lra_tokens_are_the_same_trees_without_closing_brackets() {
        let ours = small().generate(3).unwrap();
        let lra = ListOps {
            tokens: Tokens::Lra,
            ..small()
        }
        .generate(3)
        .unwrap();
        let (mut seen, mut shorter) = (0, 0);
        for ((_, a), (_, b)) in ours.parts().into_iter().zip(lra.parts()) {
            for (a, b) in a.iter().zip(b) {
                let stripped: Vec<u32> = a.tokens.iter().copied().filter(|&t| t != END).collect();
                assert_eq!(b.tokens, stripped);
                assert_eq!(b.label, a.label);
                assert!(!b.tokens.contains(&END));
                seen += 1;
                shorter += usize::from(b.tokens.len() < a.tokens.len());
            }
        }
        assert_eq!(seen, small().sizes.total());
        assert_eq!(shorter, seen, "every tree has a closing bracket");
    }

    #[test]
    fn lra_parameters_give_valid_trees_and_a_spread_of_labels() {
        let task = ListOps::with_sizes(Sizes::new(400, 50, 50));
        let split = task.generate(0).unwrap();
        check(&task, &split);
        let all: Vec<Example> = split.parts().iter().flat_map(|p| p.1.to_vec()).collect();
        let counts = label_counts(&all, 10);
        let depth_max = all
            .iter()
            .map(|e| parse(&e.tokens).unwrap().depth())
            .max()
            .unwrap();
        let mean_len = all.iter().map(|e| e.tokens.len()).sum::<usize>() / all.len();
        eprintln!("listops labels 0-9: {counts:?}; deepest {depth_max}; mean length {mean_len}");
        // Not degenerate: most classes present, none holding most of the examples.
        assert!(counts.iter().filter(|&&c| c > 0).count() >= 8, "{counts:?}");
        assert!(*counts.iter().max().unwrap() < all.len() / 2, "{counts:?}");
        // Deep trees do occur at these lengths.
        assert!(depth_max >= 8, "{depth_max}");
    }

    #[test]
    fn the_depth_limit_binds() {
        // With max_depth 3 the trees hold at most operator-operator-digit.
        let task = ListOps {
            min_length: 10,
            max_length: 60,
            max_depth: 3,
            max_args: 4,
            sizes: Sizes::new(100, 0, 0),
            tokens: Tokens::Brackets,
        };
        let split = task.generate(5).unwrap();
        check(&task, &split);
        assert!(split
            .train
            .iter()
            .any(|e| parse(&e.tokens).unwrap().depth() == 3));
    }

    #[test]
    fn duplicates_are_dropped_until_the_space_runs_out() {
        // Depth 2 and two arguments: exactly 4 operators x 100 digit pairs = 400 trees.
        let mut task = ListOps {
            min_length: 3,
            max_length: 6,
            max_depth: 2,
            max_args: 2,
            sizes: Sizes::new(300, 50, 50),
            tokens: Tokens::Brackets,
        };
        let split = task.generate(0).unwrap();
        check(&task, &split);
        task.sizes.train = 301;
        let err = task.generate(0).unwrap_err().to_string();
        assert!(err.contains("only 400 of 401 distinct"), "{err}");
    }

    #[test]
    fn impossible_parameters_are_refused() {
        let mut t = small();
        t.min_length = 200;
        assert!(t.validate().is_err());
        let t = ListOps {
            max_depth: 2,
            max_args: 3,
            min_length: 10,
            max_length: 100,
            sizes: Sizes::new(1, 0, 0),
            tokens: Tokens::Brackets,
        };
        let err = t.generate(0).unwrap_err().to_string();
        assert!(err.contains("min_length"), "{err}");
    }
}
