//! The text side of the RULER tasks on a real model (`xarena_datasets::ruler`): the model
//! directory's `tokenizer.json`, and how a task input becomes the model's prompt.
//!
//! The prompt: when `tokenizer_config.json` has a ChatML chat template (`<|im_start|>`,
//! SmolLM2-Instruct's), the input is the user turn, after the template's default system
//! turn if it has one, then the assistant header and RULER's answer prefix:
//! `<|im_start|>system\nSYSTEM<|im_end|>\n<|im_start|>user\nINPUT<|im_end|>\n
//! <|im_start|>assistant\nPREFIX`. This is written out here, not rendered by a Jinja
//! engine: any other template, or none, gives the plain prompt `INPUT PREFIX` (RULER's
//! base-model form). Decoding stops at the end-of-sequence token (`eos_token`, and
//! `<|im_end|>` under ChatML) or at the task's token limit.

use std::path::Path;

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

/// How inputs are wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    Plain,
    ChatMl { system: Option<String> },
}

pub struct RulerText {
    tokenizer: Tokenizer,
    pub template: Template,
    /// Tokens that end a generation.
    pub stop: Vec<u32>,
}

/// The default system message of a ChatML Jinja template, if it writes one literally.
fn chatml_system(template: &str) -> Option<String> {
    let start = "<|im_start|>system";
    let i = template.find(start)? + start.len();
    let rest = &template[i..];
    let j = rest.find("<|im_end|>")?;
    let body = rest[..j].replace("\\n", "\n");
    let body = body.strip_prefix('\n').unwrap_or(&body).to_string();
    // A template that puts the system message from a variable gives no literal one.
    (!body.contains("{{") && !body.contains("{%") && !body.contains('\'')).then_some(body)
}

impl RulerText {
    /// Reads `dir/tokenizer.json` (required) and `dir/tokenizer_config.json` (optional).
    pub fn load(dir: &Path) -> Result<RulerText> {
        let path = dir.join("tokenizer.json");
        anyhow::ensure!(
            path.is_file(),
            "model {}: the RULER tasks need a tokenizer.json (xarena kv convert writes one)",
            dir.display()
        );
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            super::read_json(&cfg_path)?
        } else {
            serde_json::Value::Null
        };
        let chat = cfg.get("chat_template").and_then(|v| v.as_str());
        let template = match chat {
            Some(t) if t.contains("<|im_start|>") => Template::ChatMl {
                system: chatml_system(t),
            },
            _ => Template::Plain,
        };
        let mut stop = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if let Some(e) = cfg.get("eos_token").and_then(|v| v.as_str()) {
            names.push(e);
        }
        if matches!(template, Template::ChatMl { .. }) {
            names.push("<|im_end|>");
        }
        for n in names {
            if let Some(id) = tokenizer.token_to_id(n) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        let text = RulerText {
            tokenizer,
            template,
            stop,
        };
        if let Template::ChatMl { .. } = text.template {
            // The markers must be single tokens, or the template is not what the model saw.
            let ids = text.encode("<|im_start|>user")?;
            anyhow::ensure!(
                ids.len() <= 3 && Some(ids[0]) == text.tokenizer.token_to_id("<|im_start|>"),
                "{}: <|im_start|> is not one token",
                path.display()
            );
        }
        Ok(text)
    }

    /// `plain` or `chatml`, as records and the run file name it.
    pub fn label(&self) -> &'static str {
        match self.template {
            Template::Plain => "plain",
            Template::ChatMl { .. } => "chatml",
        }
    }

    /// The prompt text the model reads.
    pub fn render(&self, input: &str, prefix: &str) -> String {
        match &self.template {
            Template::Plain => format!("{input} {prefix}"),
            Template::ChatMl { system } => {
                let sys = system.as_ref().map_or_else(String::new, |s| {
                    format!("<|im_start|>system\n{s}<|im_end|>\n")
                });
                format!("{sys}<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n{prefix}")
            }
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokens of the rendered prompt (0 if the tokenizer fails, which it does not on text).
    pub fn count(&self, input: &str, prefix: &str) -> usize {
        self.encode(&self.render(input, prefix))
            .map_or(0, |ids| ids.len())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("detokenizing: {e}"))
            .context("decoding a RULER answer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_of_smollm2_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != \
                 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named \
                 SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' \
                 + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}";
        assert_eq!(
            chatml_system(t).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(chatml_system("{{ '<|im_start|>' + m }}"), None);
    }
}
