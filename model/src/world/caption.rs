//! Captions: many templates and synonyms that describe a scene in natural language, a fixed
//! held-out split of phrasings and attribute combinations for evaluation, and a parser from
//! free text back to attributes.
//!
//! Every phrase belongs to one split. Training code draws captions through
//! [`Phrasing::sample`] with [`Split::Train`], which can only pick training templates,
//! training phrases and training attribute combinations; evaluation uses [`Split::HeldOut`]
//! and so sees wordings and combinations that training never drew.

use super::attributes::{Attributes, Camera, PartialAttributes, Scenery, TimeOfDay, Weather};
use super::noise::hash;
use serde::{Deserialize, Serialize};

/// Which side of the train / evaluation split a caption comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

/// A phrase and the split it belongs to.
type P = (&'static str, Split);
const T: Split = Split::Train;
const H: Split = Split::HeldOut;

/// Time of day as a noun: "a snowy {night}", "{night} over the hills".
const TIME_NOUN: [&[P]; TimeOfDay::COUNT] = [
    &[("dawn", T), ("sunrise", T), ("early morning", T), ("first light", T), ("sunup", T), ("daybreak", H)],
    &[("day", T), ("midday", T), ("afternoon", T), ("daytime", T), ("the middle of the day", T), ("noon", H)],
    &[("sunset", T), ("evening", T), ("dusk", T), ("twilight", T), ("golden hour", T), ("sundown", H)],
    &[
        ("night", T),
        ("nighttime", T),
        ("starry night", T),
        ("moonlit night", T),
        ("the dead of night", T),
        ("midnight", H),
    ],
];

/// Time of day as an adverbial: "mountains {at night}".
const TIME_AT: [&[P]; TimeOfDay::COUNT] = [
    &[
        ("at dawn", T),
        ("at sunrise", T),
        ("in the early morning", T),
        ("at first light", T),
        ("at sunup", T),
        ("at daybreak", H),
    ],
    &[
        ("during the day", T),
        ("in the afternoon", T),
        ("at midday", T),
        ("in the daytime", T),
        ("in the middle of the day", T),
        ("in broad daylight", H),
    ],
    &[
        ("at sunset", T),
        ("in the evening", T),
        ("at dusk", T),
        ("at twilight", T),
        ("in the golden hour", T),
        ("at sundown", H),
    ],
    &[
        ("at night", T),
        ("under the stars", T),
        ("late at night", T),
        ("by moonlight", T),
        ("in the dead of night", T),
        ("at midnight", H),
    ],
];

/// Weather as an adjective: "a {snowy} night".
const WEATHER_ADJ: [&[P]; Weather::COUNT] = [
    &[("clear", T), ("sunny", T), ("sunlit", T), ("bright", T), ("cloudless", H)],
    &[("cloudy", T), ("grey", T), ("clouded", T), ("gloomy", T), ("overcast", H)],
    &[("rainy", T), ("stormy", T), ("wet", T), ("showery", T), ("drizzly", H)],
    &[("snowy", T), ("wintry", T), ("snowbound", T), ("snow-covered", T), ("blizzard", H)],
    &[("foggy", T), ("hazy", T), ("murky", T), ("fog-bound", T), ("misty", H)],
];

/// Weather as a clause: "mountains at night {while it snows}".
const WEATHER_CLAUSE: [&[P]; Weather::COUNT] = [
    &[
        ("under a clear sky", T),
        ("with clear skies", T),
        ("under a blue sky", T),
        ("in bright sunshine", T),
        ("beneath a cloudless sky", H),
    ],
    &[
        ("under heavy clouds", T),
        ("with clouds rolling by", T),
        ("under a grey sky", T),
        ("as clouds gather", T),
        ("beneath an overcast sky", H),
    ],
    &[
        ("while it rains", T),
        ("in the pouring rain", T),
        ("in a rain shower", T),
        ("as the rain falls", T),
        ("during a downpour", H),
    ],
    &[
        ("while it snows", T),
        ("with falling snow", T),
        ("as snow falls", T),
        ("in drifting snow", T),
        ("in a gentle snowfall", H),
    ],
    &[
        ("in thick fog", T),
        ("with fog rolling in", T),
        ("in a thick mist", T),
        ("as the haze settles", T),
        ("shrouded in mist", H),
    ],
];

/// Scenery as a noun phrase: "over the {mountains}".
const SCENERY_NOUN: [&[P]; Scenery::COUNT] = [
    &[("rolling hills", T), ("green hills", T), ("the countryside", T), ("grassy meadows", H)],
    &[("mountains", T), ("mountain peaks", T), ("a mountain range", T), ("alpine summits", H)],
    &[("the ocean", T), ("ocean waves", T), ("the coast", T), ("the open sea", H)],
    &[("the desert", T), ("desert dunes", T), ("sand dunes", T), ("the sahara", H)],
    &[("a forest", T), ("pine trees", T), ("the woods", T), ("a dense woodland", H)],
    &[("a city skyline", T), ("the city", T), ("city buildings", T), ("downtown skyscrapers", H)],
];

/// Camera motion.
const CAMERA: [&[P]; Camera::COUNT] = [
    &[("camera drifting left", T), ("slow pan to the left", T), ("panning left", T), ("tracking leftward", H)],
    &[("camera drifting right", T), ("slow pan to the right", T), ("panning right", T), ("tracking rightward", H)],
    &[("static camera", T), ("the camera holds still", T), ("fixed shot", T), ("shot from a tripod", H)],
];

/// The slots a template can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    TimeNoun,
    TimeAt,
    WeatherAdj,
    WeatherClause,
    Scenery,
    Camera,
}

const SLOTS: [Slot; 6] =
    [Slot::TimeNoun, Slot::TimeAt, Slot::WeatherAdj, Slot::WeatherClause, Slot::Scenery, Slot::Camera];

impl Slot {
    fn token(self) -> &'static str {
        match self {
            Slot::TimeNoun => "{time}",
            Slot::TimeAt => "{at_time}",
            Slot::WeatherAdj => "{weather}",
            Slot::WeatherClause => "{weather_clause}",
            Slot::Scenery => "{scenery}",
            Slot::Camera => "{camera}",
        }
    }

    fn phrases(self, a: &Attributes) -> &'static [P] {
        match self {
            Slot::TimeNoun => TIME_NOUN[a.time.index()],
            Slot::TimeAt => TIME_AT[a.time.index()],
            Slot::WeatherAdj => WEATHER_ADJ[a.weather.index()],
            Slot::WeatherClause => WEATHER_CLAUSE[a.weather.index()],
            Slot::Scenery => SCENERY_NOUN[a.scenery.index()],
            Slot::Camera => CAMERA[a.camera.index()],
        }
    }
}

/// One phrase a caption can use for an attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPhrase {
    /// The attribute it names: "time", "weather", "scenery" or "camera".
    pub attribute: &'static str,
    /// The value it names, as that attribute's `label()`.
    pub value: &'static str,
    pub phrase: &'static str,
    pub split: Split,
}

/// Every phrase of every slot, training and held-out, in table order.
pub fn slot_phrases() -> Vec<SlotPhrase> {
    fn table<V: Copy>(
        attribute: &'static str,
        rows: &[&'static [P]],
        values: &[V],
        label: fn(V) -> &'static str,
    ) -> Vec<SlotPhrase> {
        rows.iter()
            .zip(values)
            .flat_map(|(row, &v)| {
                row.iter().map(move |&(phrase, split)| SlotPhrase { attribute, value: label(v), phrase, split })
            })
            .collect()
    }
    [
        table("time", &TIME_NOUN, TimeOfDay::ALL, TimeOfDay::label),
        table("time", &TIME_AT, TimeOfDay::ALL, TimeOfDay::label),
        table("weather", &WEATHER_ADJ, Weather::ALL, Weather::label),
        table("weather", &WEATHER_CLAUSE, Weather::ALL, Weather::label),
        table("scenery", &SCENERY_NOUN, Scenery::ALL, Scenery::label),
        table("camera", &CAMERA, Camera::ALL, Camera::label),
    ]
    .concat()
}

/// Sentence templates. Each names every attribute exactly once.
const TEMPLATES: &[P] = &[
    ("a {weather} {time} over {scenery}, {camera}", T),
    ("{scenery} {at_time} {weather_clause}, {camera}", T),
    ("{camera}: {scenery} {at_time}, {weather_clause}", T),
    ("{weather} {scenery} {at_time}, {camera}", T),
    ("{time} above {weather} {scenery}, {camera}", T),
    ("{at_time}, {scenery} {weather_clause}; {camera}", T),
    ("{camera} across {scenery} {at_time} {weather_clause}", T),
    ("landscape of {scenery} {at_time}, {weather}, {camera}", T),
    ("{scenery}, {weather} {time}, {camera}", T),
    ("a view of {scenery} {at_time} {weather_clause}. {camera}", T),
    ("{at_time} {weather_clause}, {camera} over {scenery}", H),
    ("{camera}, showing {scenery} on a {weather} {time}", H),
    ("{weather} weather, {scenery}, {time}; {camera}", H),
];

/// Every piece of text that captions of either split are made of: each template with its
/// slots blanked, and each slot phrase. A caption's word pieces are those of its pieces, since
/// every slot stands between spaces, punctuation or the ends of the template, where the
/// tokenizer splits words anyway (checked by a test here and, with the real tokenizer, in
/// `tests/text_minilm.rs`).
pub fn caption_pieces() -> Vec<String> {
    let templates = TEMPLATES.iter().map(|(t, _)| SLOTS.iter().fold(t.to_string(), |t, s| t.replace(s.token(), " ")));
    templates.chain(slot_phrases().into_iter().map(|p| p.phrase.to_string())).collect()
}

/// Attribute combinations (time, weather, scenery) reserved for evaluation: training never
/// draws them, in any phrasing or camera motion. 12 of the 120, every time of day three
/// times, every weather and scenery at least twice.
pub const HELD_OUT_COMBINATIONS: [(TimeOfDay, Weather, Scenery); 12] = [
    (TimeOfDay::Dawn, Weather::Fog, Scenery::Ocean),
    (TimeOfDay::Dawn, Weather::Snow, Scenery::Forest),
    (TimeOfDay::Dawn, Weather::Rain, Scenery::City),
    (TimeOfDay::Day, Weather::Snow, Scenery::Desert),
    (TimeOfDay::Day, Weather::Fog, Scenery::Mountains),
    (TimeOfDay::Day, Weather::Cloudy, Scenery::Ocean),
    (TimeOfDay::Sunset, Weather::Rain, Scenery::Hills),
    (TimeOfDay::Sunset, Weather::Clear, Scenery::Forest),
    (TimeOfDay::Sunset, Weather::Snow, Scenery::City),
    (TimeOfDay::Night, Weather::Cloudy, Scenery::Desert),
    (TimeOfDay::Night, Weather::Clear, Scenery::Mountains),
    (TimeOfDay::Night, Weather::Fog, Scenery::Hills),
];

/// Whether these attributes are a held-out combination.
pub fn is_held_out_combination(a: &Attributes) -> bool {
    HELD_OUT_COMBINATIONS.contains(&(a.time, a.weather, a.scenery))
}

/// Whether training may draw these attributes.
pub fn split_of(a: &Attributes) -> Split {
    if is_held_out_combination(a) { Split::HeldOut } else { Split::Train }
}

/// The choices that turn attributes into words: a template and one phrase per slot. Kept
/// fixed over a clip, so the caption of a transition keeps its wording while its attributes
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Phrasing {
    pub split: Split,
    /// Index among the templates of this split.
    pub template: usize,
    /// Per slot, a number reduced modulo the slot's phrase count in this split.
    pub picks: [u32; 6],
}

fn in_split(list: &'static [P], split: Split) -> impl Iterator<Item = &'static str> {
    list.iter().filter(move |(_, s)| *s == split).map(|(p, _)| *p)
}

impl Phrasing {
    /// A random phrasing of `split`, from a hash of `seed`.
    pub fn sample(split: Split, seed: u64) -> Phrasing {
        let templates = in_split(TEMPLATES, split).count();
        let mut picks = [0u32; 6];
        for (i, p) in picks.iter_mut().enumerate() {
            *p = (hash(seed, 1 + i as i64, 77) % 1024) as u32;
        }
        Phrasing { split, template: (hash(seed, 0, 77) % templates as u64) as usize, picks }
    }

    /// The caption of `attributes` in this phrasing.
    pub fn caption(&self, attributes: &Attributes) -> String {
        let template = in_split(TEMPLATES, self.split)
            .nth(self.template)
            .expect("template index comes from the count of the same split");
        let mut out = template.to_string();
        for (slot, pick) in SLOTS.iter().zip(self.picks) {
            if !out.contains(slot.token()) {
                continue;
            }
            let phrases: Vec<&str> = in_split(slot.phrases(attributes), self.split).collect();
            let phrase = phrases[pick as usize % phrases.len()];
            out = out.replace(slot.token(), phrase);
        }
        out
    }

    /// Every phrasing of `split` (template × phrase choices), for exhaustive tests.
    pub fn enumerate(split: Split, attributes: &Attributes) -> Vec<String> {
        let mut out = Vec::new();
        for template in in_split(TEMPLATES, split) {
            let mut partial = vec![template.to_string()];
            for slot in SLOTS {
                if !template.contains(slot.token()) {
                    continue;
                }
                let phrases: Vec<&str> = in_split(slot.phrases(attributes), split).collect();
                partial =
                    partial.iter().flat_map(|s| phrases.iter().map(move |p| s.replace(slot.token(), p))).collect();
            }
            out.extend(partial);
        }
        out
    }
}

/// Words and phrases the parser knows, each with the attribute value it means. A superset of
/// the caption phrases: what a viewer might type ("sundown over the sea").
struct Lexicon {
    time: &'static [(&'static str, TimeOfDay)],
    weather: &'static [(&'static str, Weather)],
    scenery: &'static [(&'static str, Scenery)],
    camera: &'static [(&'static str, Camera)],
}

const LEXICON: Lexicon = Lexicon {
    time: &[
        ("dawn", TimeOfDay::Dawn),
        ("sunrise", TimeOfDay::Dawn),
        ("daybreak", TimeOfDay::Dawn),
        ("morning", TimeOfDay::Dawn),
        ("first light", TimeOfDay::Dawn),
        ("sunup", TimeOfDay::Dawn),
        ("day", TimeOfDay::Day),
        ("daytime", TimeOfDay::Day),
        ("midday", TimeOfDay::Day),
        ("noon", TimeOfDay::Day),
        ("afternoon", TimeOfDay::Day),
        ("daylight", TimeOfDay::Day),
        ("sunset", TimeOfDay::Sunset),
        ("evening", TimeOfDay::Sunset),
        ("dusk", TimeOfDay::Sunset),
        ("sundown", TimeOfDay::Sunset),
        ("twilight", TimeOfDay::Sunset),
        ("golden hour", TimeOfDay::Sunset),
        ("night", TimeOfDay::Night),
        ("nighttime", TimeOfDay::Night),
        ("midnight", TimeOfDay::Night),
        ("stars", TimeOfDay::Night),
        ("starry", TimeOfDay::Night),
        ("moonlit", TimeOfDay::Night),
        ("moonlight", TimeOfDay::Night),
        ("tonight", TimeOfDay::Night),
    ],
    weather: &[
        ("clear", Weather::Clear),
        ("sunny", Weather::Clear),
        ("sunlit", Weather::Clear),
        ("bright", Weather::Clear),
        ("sunshine", Weather::Clear),
        ("blue sky", Weather::Clear),
        ("cloudless", Weather::Clear),
        ("cloudy", Weather::Cloudy),
        ("clouds", Weather::Cloudy),
        ("overcast", Weather::Cloudy),
        ("grey", Weather::Cloudy),
        ("gray", Weather::Cloudy),
        ("clouded", Weather::Cloudy),
        ("gloomy", Weather::Cloudy),
        ("rain", Weather::Rain),
        ("rainy", Weather::Rain),
        ("raining", Weather::Rain),
        ("rains", Weather::Rain),
        ("rainfall", Weather::Rain),
        ("drizzle", Weather::Rain),
        ("drizzly", Weather::Rain),
        ("downpour", Weather::Rain),
        ("storm", Weather::Rain),
        ("stormy", Weather::Rain),
        ("showers", Weather::Rain),
        ("pouring", Weather::Rain),
        ("wet", Weather::Rain),
        ("showery", Weather::Rain),
        ("snow", Weather::Snow),
        ("snowy", Weather::Snow),
        ("snowing", Weather::Snow),
        ("snows", Weather::Snow),
        ("snowfall", Weather::Snow),
        ("snowflakes", Weather::Snow),
        ("blizzard", Weather::Snow),
        ("wintry", Weather::Snow),
        ("flurries", Weather::Snow),
        ("snowbound", Weather::Snow),
        ("fog", Weather::Fog),
        ("foggy", Weather::Fog),
        ("mist", Weather::Fog),
        ("misty", Weather::Fog),
        ("haze", Weather::Fog),
        ("hazy", Weather::Fog),
        ("murky", Weather::Fog),
    ],
    scenery: &[
        ("hills", Scenery::Hills),
        ("hill", Scenery::Hills),
        ("hillside", Scenery::Hills),
        ("countryside", Scenery::Hills),
        ("meadows", Scenery::Hills),
        ("meadow", Scenery::Hills),
        ("mountains", Scenery::Mountains),
        ("mountain", Scenery::Mountains),
        ("peaks", Scenery::Mountains),
        ("alpine", Scenery::Mountains),
        ("alps", Scenery::Mountains),
        ("summits", Scenery::Mountains),
        ("ocean", Scenery::Ocean),
        ("sea", Scenery::Ocean),
        ("seaside", Scenery::Ocean),
        ("coast", Scenery::Ocean),
        ("coastline", Scenery::Ocean),
        ("waves", Scenery::Ocean),
        ("beach", Scenery::Ocean),
        ("shore", Scenery::Ocean),
        ("desert", Scenery::Desert),
        ("dunes", Scenery::Desert),
        ("dune", Scenery::Desert),
        ("sand", Scenery::Desert),
        ("sahara", Scenery::Desert),
        ("forest", Scenery::Forest),
        ("woods", Scenery::Forest),
        ("trees", Scenery::Forest),
        ("woodland", Scenery::Forest),
        ("pines", Scenery::Forest),
        ("pine", Scenery::Forest),
        ("city", Scenery::City),
        ("skyline", Scenery::City),
        ("town", Scenery::City),
        ("downtown", Scenery::City),
        ("buildings", Scenery::City),
        ("skyscrapers", Scenery::City),
        ("metropolis", Scenery::City),
        ("streets", Scenery::City),
    ],
    camera: &[
        ("left", Camera::PanLeft),
        ("leftward", Camera::PanLeft),
        ("leftwards", Camera::PanLeft),
        ("right", Camera::PanRight),
        ("rightward", Camera::PanRight),
        ("rightwards", Camera::PanRight),
        ("still", Camera::Still),
        ("static", Camera::Still),
        ("fixed", Camera::Still),
        ("stationary", Camera::Still),
        ("motionless", Camera::Still),
        ("steady", Camera::Still),
        ("tripod", Camera::Still),
        ("locked", Camera::Still),
    ],
};

/// Weather words can co-occur ("rain under heavy clouds"): the more specific wins.
fn weather_rank(w: Weather) -> u8 {
    match w {
        Weather::Snow => 4,
        Weather::Rain => 3,
        Weather::Fog => 2,
        Weather::Cloudy => 1,
        Weather::Clear => 0,
    }
}

/// Finds the first phrase of `table` in the words, by earliest position; phrases of several
/// words match consecutive words.
fn find<V: Copy>(words: &[&str], table: &[(&'static str, V)]) -> Vec<(usize, V)> {
    let mut hits = Vec::new();
    for (phrase, value) in table {
        let parts: Vec<&str> = phrase.split(' ').collect();
        for start in 0..words.len() {
            if words[start..].starts_with(&parts) {
                hits.push((start, *value));
            }
        }
    }
    hits.sort_by_key(|(pos, _)| *pos);
    hits
}

fn first<V: Copy>(hits: Vec<(usize, V)>) -> Option<V> {
    hits.first().map(|(_, v)| *v)
}

/// Parses a free caption into the attributes it mentions. Unknown words are ignored; an
/// attribute the text does not mention is `None`. Case and punctuation do not matter.
pub fn parse(text: &str) -> PartialAttributes {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let camera_hits = find(&words, LEXICON.camera);
    // "still" wins over a direction: "panning left, then still" is ambiguous, but a prompt
    // that says still means it.
    let camera = camera_hits.iter().find(|(_, c)| *c == Camera::Still).or(camera_hits.first()).map(|(_, c)| *c);
    PartialAttributes {
        time: first(find(&words, LEXICON.time)),
        weather: find(&words, LEXICON.weather).into_iter().map(|(_, w)| w).max_by_key(|w| weather_rank(*w)),
        scenery: first(find(&words, LEXICON.scenery)),
        camera,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_slot_stands_where_words_split() {
        for (template, _) in TEMPLATES {
            for slot in SLOTS {
                for (at, _) in template.match_indices(slot.token()) {
                    let before = template[..at].chars().next_back();
                    let after = template[at + slot.token().len()..].chars().next();
                    for c in [before, after].into_iter().flatten() {
                        assert!(!c.is_alphanumeric(), "{template:?}: {} touches {c:?}", slot.token());
                    }
                }
            }
        }
        let pieces = caption_pieces();
        assert_eq!(pieces.len(), TEMPLATES.len() + slot_phrases().len());
        assert!(pieces.iter().all(|p| !p.contains('{')), "{pieces:?}");
    }

    fn all_attributes() -> impl Iterator<Item = Attributes> {
        TimeOfDay::ALL.iter().flat_map(|&time| {
            Weather::ALL.iter().flat_map(move |&weather| {
                Scenery::ALL.iter().flat_map(move |&scenery| {
                    Camera::ALL.iter().map(move |&camera| Attributes { time, weather, scenery, camera })
                })
            })
        })
    }

    #[test]
    fn every_slot_list_has_phrases_in_both_splits() {
        for a in all_attributes() {
            for slot in SLOTS {
                for split in [Split::Train, Split::HeldOut] {
                    assert!(in_split(slot.phrases(&a), split).count() > 0, "{slot:?} {a} {split:?}");
                }
            }
        }
        for t in in_split(TEMPLATES, Split::Train).chain(in_split(TEMPLATES, Split::HeldOut)) {
            for slot in [Slot::Scenery, Slot::Camera] {
                assert!(t.contains(slot.token()), "{t} lacks {slot:?}");
            }
            assert!(t.contains("{time}") ^ t.contains("{at_time}"), "{t}: one time slot");
            assert!(t.contains("{weather}") ^ t.contains("{weather_clause}"), "{t}: one weather slot");
        }
    }

    #[test]
    fn slot_phrases_are_the_phrases_captions_use() {
        let phrases = slot_phrases();
        for a in all_attributes() {
            for slot in SLOTS {
                for &(phrase, split) in slot.phrases(&a) {
                    let listed = phrases.iter().filter(|p| p.phrase == phrase && p.split == split).count();
                    assert!(listed >= 1, "{phrase:?} is not listed");
                }
            }
        }
        let count = |attribute: &str, value: &str, split: Split| {
            phrases.iter().filter(|p| p.attribute == attribute && p.value == value && p.split == split).count()
        };
        // Nouns and adverbials: five training phrases and one held-out each.
        assert_eq!(count("time", "sunset", Split::Train), 10);
        assert_eq!(count("time", "sunset", Split::HeldOut), 2);
        assert_eq!(count("weather", "fog", Split::HeldOut), 2);
        assert_eq!(count("camera", "still", Split::Train), 3);
        let tables: [&[&[P]]; 6] = [&TIME_NOUN, &TIME_AT, &WEATHER_ADJ, &WEATHER_CLAUSE, &SCENERY_NOUN, &CAMERA];
        let total: usize = tables.iter().flat_map(|rows| rows.iter()).map(|row| row.len()).sum();
        assert_eq!(phrases.len(), total);
    }

    #[test]
    fn held_out_combinations_are_a_tenth_and_cover_every_value() {
        let held: Vec<Attributes> =
            all_attributes().filter(|a| a.camera == Camera::Still && is_held_out_combination(a)).collect();
        assert_eq!(held.len(), 12);
        // Every single value still appears in training, in some combination.
        let train: Vec<Attributes> = all_attributes().filter(|a| split_of(a) == Split::Train).collect();
        for a in all_attributes() {
            assert!(train.iter().any(|b| b.time == a.time));
            assert!(train.iter().any(|b| b.weather == a.weather));
            assert!(train.iter().any(|b| b.scenery == a.scenery));
        }
    }

    /// The split is disjoint: no caption training can produce equals any held-out caption,
    /// and training draws never land on a held-out combination. Exhaustive over every
    /// attribute combination, template and phrase.
    #[test]
    fn held_out_split_is_disjoint() {
        let mut train = HashSet::new();
        let mut held_out = HashSet::new();
        for a in all_attributes() {
            for c in Phrasing::enumerate(Split::HeldOut, &a) {
                held_out.insert(c);
            }
            if split_of(&a) == Split::Train {
                for c in Phrasing::enumerate(Split::Train, &a) {
                    train.insert(c);
                }
            }
        }
        assert!(train.len() > 100_000, "only {} training captions", train.len());
        assert!(held_out.len() > 1_000);
        assert!(train.is_disjoint(&held_out));
        // Training phrasings never use a held-out phrase anywhere in the caption.
        let held_phrases: Vec<&str> = [&TIME_NOUN[..], &TIME_AT, &WEATHER_ADJ, &WEATHER_CLAUSE, &SCENERY_NOUN, &CAMERA]
            .iter()
            .flat_map(|table| table.iter().flat_map(|list| in_split(list, Split::HeldOut)))
            .collect();
        for seed in 0..20_000u64 {
            let c = Phrasing::sample(Split::Train, seed).caption(&Attributes::default());
            assert!(train.contains(&c), "{c}");
            let words: Vec<&str> = c.split(|ch: char| !ch.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
            for h in &held_phrases {
                let phrase: Vec<&str> = h.split(' ').collect();
                let found = words.windows(phrase.len()).any(|w| w == phrase.as_slice());
                assert!(!found, "training caption {c:?} contains held-out phrase {h:?}");
            }
        }
    }

    /// caption → parse → the attributes the caption was written from, for every caption the
    /// templates can produce, both splits.
    #[test]
    fn parser_round_trip_is_exact_over_every_caption() {
        let mut checked = 0usize;
        for a in all_attributes() {
            for split in [Split::Train, Split::HeldOut] {
                for caption in Phrasing::enumerate(split, &a) {
                    let parsed = parse(&caption);
                    assert_eq!(parsed.over(Attributes::default()), a, "{caption:?} parsed as {parsed:?}");
                    assert!(parsed.time.is_some() && parsed.weather.is_some());
                    assert!(parsed.scenery.is_some() && parsed.camera.is_some());
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn parser_ignores_unknown_words_and_reads_free_text() {
        let p = parse("Sundown over the SEA, please!! (xyzzy)");
        assert_eq!(p.time, Some(TimeOfDay::Sunset));
        assert_eq!(p.scenery, Some(Scenery::Ocean));
        assert_eq!(p.weather, None);
        assert_eq!(p.camera, None);
        assert!(parse("lorem ipsum dolor").is_empty());
        assert!(parse("").is_empty());
        let p = parse("heavy rain under grey clouds, camera static");
        assert_eq!(p.weather, Some(Weather::Rain));
        assert_eq!(p.camera, Some(Camera::Still));
        assert_eq!(parse("first light on the dunes").time, Some(TimeOfDay::Dawn));
    }

    #[test]
    fn the_issue_examples_parse() {
        let a = parse("a snowy night over the mountains, camera drifting left");
        let b = parse("mountains at night while it snows, slow pan to the left");
        assert_eq!(a, b);
        assert_eq!(
            a.over(Attributes::default()),
            Attributes {
                time: TimeOfDay::Night,
                weather: Weather::Snow,
                scenery: Scenery::Mountains,
                camera: Camera::PanLeft
            }
        );
    }
}
