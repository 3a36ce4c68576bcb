//! Stop strings (`stop`): text is held back while it could still be the start of one, and a
//! match ends the choice with the text before it (vLLM's default, stop string excluded).

#[derive(Clone, Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Feeds generated text. Returns the text that is safe to send and, when a stop string
    /// matched, that string (the text before it is returned; it and anything after dropped).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        if self.stops.is_empty() {
            return (text.to_owned(), None);
        }
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let before = self.held[..at].to_owned();
            self.held.clear();
            return (before, Some(stop));
        }
        // Keep the shortest suffix that some stop string starts with.
        let keep_from = self
            .held
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| {
                let tail = &self.held[at..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let ready = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        (ready, None)
    }

    /// Releases held text when the choice ends without a match.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_stops_text_passes_through() {
        let mut matcher = StopMatcher::new(Vec::new());
        assert_eq!(matcher.push(" a"), (" a".to_owned(), None));
    }

    #[test]
    fn holds_back_possible_prefixes_and_cuts_at_matches() {
        let mut matcher = StopMatcher::new(vec!["the end".to_owned(), String::new()]);
        assert_eq!(matcher.push("so the"), ("so ".to_owned(), None));
        assert_eq!(matcher.push(" en"), (String::new(), None));
        assert_eq!(
            matcher.push("d now"),
            (String::new(), Some("the end".to_owned()))
        );
        let mut matcher = StopMatcher::new(vec!["xyz".to_owned()]);
        assert_eq!(matcher.push("ab x"), ("ab ".to_owned(), None));
        assert_eq!(matcher.push("q"), ("xq".to_owned(), None));
        assert_eq!(matcher.push(" x"), (" ".to_owned(), None));
        assert_eq!(matcher.flush(), "x");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut matcher = StopMatcher::new(vec!["cd".to_owned(), "b".to_owned()]);
        assert_eq!(matcher.push("abcd"), ("a".to_owned(), Some("b".to_owned())));
    }
}
