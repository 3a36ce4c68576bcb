//! Chat messages to prompt text: Llama 3's chat template.
//!
//! Everyone who needs "the prompt" of a chat request renders it here, so the proxy's and the
//! endpoint picker's prefix hashes and the simulator's token blocks describe the same text:
//! `<|begin_of_text|>`, then per message `<|start_header_id|>{role}<|end_header_id|>\n\n`
//! + trimmed content + `<|eot_id|>`, then (for generation) the assistant header.
pub const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";
const START_HEADER: &str = "<|start_header_id|>";
const END_HEADER: &str = "<|end_header_id|>\n\n";
const END_OF_TURN: &str = "<|eot_id|>";

/// Renders messages in order into one prompt string.
#[derive(Debug)]
pub struct ChatPromptBuilder {
    out: String,
}

impl Default for ChatPromptBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatPromptBuilder {
    pub fn new() -> Self {
        let mut out = String::with_capacity(256);
        out.push_str(BEGIN_OF_TEXT);
        Self { out }
    }

    pub fn message(&mut self, role: &str, content: &str) {
        self.out.push_str(START_HEADER);
        self.out.push_str(role);
        self.out.push_str(END_HEADER);
        self.out.push_str(content.trim());
        self.out.push_str(END_OF_TURN);
    }

    /// The prompt; with `add_generation_prompt` it ends with the assistant header, as a server
    /// renders it before generating.
    pub fn finish(mut self, add_generation_prompt: bool) -> String {
        if add_generation_prompt {
            self.out.push_str(START_HEADER);
            self.out.push_str("assistant");
            self.out.push_str(END_HEADER);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_llama3_template() {
        let mut builder = ChatPromptBuilder::new();
        builder.message("system", "  be brief ");
        builder.message("user", "hi");
        assert_eq!(
            builder.finish(true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn a_conversation_extends_its_previous_prompt() {
        let mut first = ChatPromptBuilder::new();
        first.message("user", "q1");
        let first = first.finish(true);
        let mut second = ChatPromptBuilder::new();
        second.message("user", "q1");
        second.message("assistant", "a1");
        second.message("user", "q2");
        assert!(second.finish(true).starts_with(&first));
    }
}
