"""Templated synthetic text corpora for the demo language models (deterministic per seed)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence

Rng = random.Random  # per-call speed matters here; numpy's Generator is ~10x slower per draw
Slot = Sequence[str] | Callable[[Rng], str]

_SLOT = re.compile(r"\{(\w+)\}")


def pick(rng: Rng, seq: Sequence[str]) -> str:
    return seq[rng.randrange(len(seq))]


def fill(rng: Rng, template: str, slots: Mapping[str, Slot]) -> str:
    """Replace every {slot} with a random choice (slot values may hold slots themselves)."""

    def one(match: re.Match[str]) -> str:
        slot = slots[match.group(1)]
        return slot(rng) if callable(slot) else pick(rng, slot)

    text = template
    for _ in range(3):
        if "{" not in text:
            break
        text = _SLOT.sub(one, text)
    return text


def corpus(
    rng: Rng,
    templates: Mapping[str, Sequence[str]],
    slots: Mapping[str, Slot],
    n: int,
    *,
    weights: Mapping[str, float] | None = None,
    label_noise: float = 0.0,
    mix_rate: float = 0.0,
    capitalize: bool = True,
) -> tuple[list[str], list[str]]:
    """n distinct texts with labels.

    mix_rate: chance of appending a sentence of another class (the label stays the first one's);
    label_noise: chance the label is replaced by a random class, as in real annotations.
    """
    labels = sorted(templates)
    p = [(weights or {}).get(lab, 1.0) for lab in labels]
    seen: set[str] = set()
    texts: list[str] = []
    out_labels: list[str] = []
    attempts = 0
    while len(texts) < n and attempts < n * 20:
        attempts += 1
        label = rng.choices(labels, weights=p)[0]
        text = fill(rng, pick(rng, templates[label]), slots)
        if mix_rate and rng.random() < mix_rate:
            other = pick(rng, [lab for lab in labels if lab != label])
            text = f"{text} {fill(rng, pick(rng, templates[other]), slots)}"
        text = " ".join(text.split())  # single spaces: what the ONNX tokenizer expects
        if capitalize:
            text = text[:1].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        if label_noise and rng.random() < label_noise:
            label = pick(rng, labels)
        texts.append(text)
        out_labels.append(label)
    return texts, out_labels


def digests(
    rng: Rng, templates: Mapping[str, Sequence[str]], slots: Mapping[str, Slot], n: int
) -> tuple[list[str], list[str]]:
    """n distinct news digests: one to three items of the same class joined together."""
    labels = sorted(templates)
    seen: set[str] = set()
    texts: list[str] = []
    out_labels: list[str] = []
    attempts = 0
    while len(texts) < n and attempts < n * 20:
        attempts += 1
        label = pick(rng, labels)
        parts = [fill(rng, pick(rng, templates[label]), slots) for _ in range(rng.randint(1, 3))]
        text = ". ".join(" ".join(p.split()) for p in parts)
        if text not in seen:
            seen.add(text)
            texts.append(text)
            out_labels.append(label)
    return texts, out_labels


def _digits(n: int) -> Callable[[Rng], str]:
    return lambda rng: "".join(str(rng.randrange(10)) for _ in range(n))


def _int_between(lo: int, hi: int) -> Callable[[Rng], str]:
    return lambda rng: str(rng.randint(lo, hi))


# Vocabulary tables stay one-entry-after-another rather than one-per-line.
# fmt: off

# ---------------------------------------------------------------------------------------------
# Product-review sentiment

SENTIMENT_SLOTS: dict[str, Slot] = {
    "product": (
        "headphones", "blender", "phone case", "running shoes", "coffee maker", "backpack",
        "desk lamp", "keyboard", "air fryer", "yoga mat", "smartwatch", "water bottle",
        "robot vacuum", "tent", "monitor", "office chair", "toothbrush", "webcam", "charger",
        "rain jacket",
    ),
    "aspect": (
        "battery life", "sound quality", "build quality", "delivery", "price",
        "customer service", "packaging", "fit", "screen", "setup", "manual", "material",
    ),
    "who": (
        "my wife", "my husband", "my son", "my daughter", "my dad", "my mum", "myself",
        "the office", "a friend", "my partner",
    ),
    "pos_adj": (
        "great", "excellent", "fantastic", "superb", "solid", "amazing", "brilliant",
        "outstanding", "impressive", "lovely",
    ),
    "neg_adj": (
        "terrible", "awful", "flimsy", "disappointing", "useless", "poor", "cheap",
        "horrible", "faulty", "dreadful",
    ),
    "pos_clause": (
        "works perfectly", "exceeded my expectations", "is worth every penny",
        "does exactly what I wanted", "arrived early and well packed", "feels really premium",
        "made my mornings so much easier", "has been flawless for months",
        "gets used every single day", "is something I would buy again",
    ),
    "neg_clause": (
        "stopped working after a week", "broke the second time I used it",
        "is a complete waste of money", "arrived damaged", "never charged properly",
        "started making a weird noise", "fell apart within a month",
        "looks nothing like the photos", "had to go back for a return",
        "came with support that never answered my emails",
    ),
    "neu_clause": (
        "arrived on Tuesday", "does what it says", "is about what I expected",
        "is okay for the price", "looks like the pictures", "came in a plain box",
        "is fine, nothing special", "took a few days to set up", "is pretty average",
        "has only been used twice so far",
    ),
}

SENTIMENT: dict[str, tuple[str, ...]] = {
    "positive": (
        "The {product} {pos_clause}.",
        "{pos_adj} {product}, it {pos_clause}!",
        "Bought this {product} for {who} and it {pos_clause}.",
        "Really {pos_adj} {aspect}. Highly recommend.",
        "Five stars. The {aspect} is {pos_adj}.",
        "I was sceptical but the {product} {pos_clause}.",
        "The {aspect} is {pos_adj} and the {product} {pos_clause}.",
        "Not cheap, but the {product} {pos_clause}.",
        "Love it! {pos_adj} {aspect}.",
        "The {aspect} was a bit {neg_adj} at first, but the {product} {pos_clause}.",
    ),
    "negative": (
        "The {product} {neg_clause}.",
        "{neg_adj} {product}, it {neg_clause}.",
        "Bought this {product} for {who} and it {neg_clause}.",
        "Really {neg_adj} {aspect}. Avoid.",
        "One star. The {aspect} is {neg_adj}.",
        "Looked nice at first but the {product} {neg_clause}.",
        "Not {pos_adj} at all, the {product} {neg_clause}.",
        "Do not buy. {neg_adj} {aspect}.",
        "The {aspect} was {pos_adj} but the {product} {neg_clause}.",
    ),
    "neutral": (
        "The {product} {neu_clause}.",
        "Bought the {product} for {who}. It {neu_clause}.",
        "The {aspect} is okay.",
        "Three stars. The {product} {neu_clause}.",
        "It's a {product}. It {neu_clause}.",
        "The {aspect} is {pos_adj} but the {aspect} is {neg_adj}.",
        "Not {neg_adj}, not {pos_adj}. The {product} {neu_clause}.",
        "The {product} for {who} {neu_clause}.",
    ),
}

# ---------------------------------------------------------------------------------------------
# News-headline topics

TOPIC_SLOTS: dict[str, Slot] = {
    "company": (
        "Acme", "Globex", "Initech", "Umbrella Holdings", "Vandelay Industries", "Stark Industries",
        "Wayne Enterprises", "Tyrell Corp", "Hooli", "Soylent", "Cyberdyne", "Massive Dynamic",
    ),
    "country": (
        "Brazil", "Japan", "Germany", "Canada", "India", "Kenya", "France", "Mexico", "Australia",
        "South Korea",
    ),
    "city": (
        "London", "Lagos", "Toronto", "Madrid", "Seoul", "Chicago", "Sydney", "Mumbai", "Berlin",
        "Nairobi",
    ),
    "team": (
        "the Falcons", "Rovers", "United", "the Comets", "City", "the Tigers", "Athletic",
        "the Sharks", "Wanderers", "the Giants",
    ),
    "politician": (
        "the prime minister", "the senator", "the governor", "the mayor", "opposition leaders",
        "the finance minister", "lawmakers", "the president",
    ),
    "move": ("rise", "fall", "jump", "slide", "climb", "tumble"),
    "pct": _int_between(2, 19),
    "num": _int_between(2, 900),
    "score": ("2-1", "3-0", "1-0", "4-2", "2-2 on penalties", "3-1"),
    "feature": (
        "a foldable screen", "satellite messaging", "a 200-megapixel camera", "all-day battery",
        "on-device AI",
    ),
}

TOPICS: dict[str, tuple[str, ...]] = {
    "business": (
        "{company} shares {move} {pct}% after quarterly earnings",
        "{company} to acquire rival in ${num} million deal",
        "Central bank in {country} holds interest rates steady",
        "{company} cuts {num} jobs amid slowing demand",
        "Oil prices {move} as supply concerns grow",
        "{company} reports record revenue for the third quarter",
        "Retail sales in {country} {move} {pct}% in March",
        "Investors weigh inflation data as markets {move}",
        "{company} chief executive steps down after {pct} years",
        "Startup valuations {move} as venture funding dries up in {city}",
    ),
    "sports": (
        "{team} beat {team} {score} to reach the final",
        "{team} striker ruled out for {pct} weeks with injury",
        "Late goal gives {team} dramatic win over {team}",
        "{country} names squad for world cup qualifiers",
        "Coach sacked after {team} lose {pct} games in a row",
        "Record crowd watches {team} clinch the title in {city}",
        "Tennis star advances to semifinal in {city}",
        "{team} sign midfielder on a {pct}-year contract",
        "Marathon in {city} won in course-record time",
    ),
    "technology": (
        "{company} unveils new smartphone with {feature}",
        "{company} launches AI assistant for developers",
        "Data breach at {company} exposes {num} million accounts",
        "Chipmaker {company} announces faster processors",
        "{company} releases update to fix security flaw",
        "Startup in {city} raises ${num} million for cloud software",
        "Regulators probe {company} over app store rules",
        "New open-source model rivals proprietary chatbots",
        "{company} delays launch of its VR headset",
    ),
    "politics": (
        "{politician} unveils plan to overhaul the tax code",
        "Parliament in {country} passes controversial election bill",
        "{politician} faces questions over campaign funding",
        "Voters in {city} head to the polls on Sunday",
        "Coalition talks collapse in {country}",
        "{politician} vetoes budget bill",
        "Opposition calls for inquiry into {politician}",
        "Leaders of {country} and {country} sign trade pact",
        "Poll shows tight race as {politician} trails by {pct} points",
    ),
    "health": (
        "Study links poor sleep to higher risk of heart disease",
        "Hospitals in {city} report surge in flu cases",
        "New vaccine shows {pct}% fewer infections in late-stage trial",
        "Health officials warn of measles outbreak in {country}",
        "Regulator approves new drug for type 2 diabetes",
        "Daily walking cuts risk of early death, researchers say",
        "Nurses in {city} strike over staffing levels",
        "Doctors urge parents to limit children's screen time",
        "Clinics in {country} struggle with {pct}-week waiting lists",
    ),
    "science": (
        "Astronomers detect water vapour on distant exoplanet",
        "Telescope captures galaxy {num} million light-years away",
        "Researchers in {city} develop battery that charges in minutes",
        "Fossil find in {country} rewrites dinosaur family tree",
        "Physicists observe rare particle decay at collider",
        "Arctic sea ice hits record low, satellite data show",
        "Scientists sequence genome of ancient wheat",
        "Mars rover finds evidence of ancient lake",
        "New species of deep-sea fish discovered off {country}",
    ),
}

# ---------------------------------------------------------------------------------------------
# SMS spam


def _phone(rng: Rng) -> str:
    return f"0{_digits(3)(rng)} {_digits(3)(rng)} {_digits(4)(rng)}"


SPAM_SLOTS: dict[str, Slot] = {
    "prize": (
        "£1000 cash prize", "brand new iPhone", "$500 gift card", "free cruise for two",
        "luxury holiday", "Tesco voucher",
    ),
    "phone": _phone,
    "shortcode": _digits(5),
    "url": (
        "http://bit.ly/{code}", "www.secure-verify-{code}.com", "http://claim-now.net/{code}",
        "www.parcel-fee.info/{code}",
    ),
    "code": _digits(6),
    "bank": ("bank", "PayPal", "Netflix", "Amazon", "Apple ID"),
    "pct": ("50", "70", "80", "90"),
    "goods": ("shoes", "watches", "handbags", "electronics", "supplements"),
    "money": ("£1.99", "$2.50", "£250", "$1,200", "€3.45"),
    "meal": ("lunch", "dinner", "coffee", "drinks", "brunch"),
    "time": ("7", "half six", "noon", "8pm", "10:30"),
    "num": ("5", "10", "15", "20"),
    "grocery": ("milk", "bread", "some eggs", "nappies", "dog food", "bin bags"),
    "name": ("Sam", "Alex", "Priya", "Tom", "Jess", "Maria", "Omar", "Grace"),
    "shop": ("Amazon", "ASOS", "IKEA", "Argos", "Zalando"),
    "team": ("United", "City", "the Lakers", "Arsenal"),
    "day": ("Monday", "Tuesday", "Thursday", "Friday"),
}

SPAM: dict[str, tuple[str, ...]] = {
    "spam": (
        "WINNER!! You have been selected to receive a {prize}. Call {phone} now to claim.",
        "URGENT: your {bank} account has been suspended. Verify your details at {url}",
        "Congratulations! You won a {prize}. Text CLAIM to {shortcode}. T&Cs apply",
        "Get {pct}% OFF all {goods} today only! Shop now at {url}",
        "Your parcel is on hold due to unpaid fees. Pay {money} at {url}",
        "FREE entry into our weekly draw to win a {prize}. Txt WIN to {shortcode}",
        "You have an outstanding refund of {money}. Claim at {url} before it expires",
        "Last chance: claim your {prize} before midnight. Call {phone}",
        "Earn {money} a day working from home. No experience needed. Reply INFO",
        "Your {bank} payment failed. Update your card within 24h at {url} to avoid closure",
    ),
    "ham": (
        "Hey, are we still on for {meal} at {time}?",
        "Running {num} minutes late, sorry!",
        "Can you pick up {grocery} on the way home?",
        "Happy birthday {name}! Hope you have a great day",
        "Your {shop} order has been delivered to your front door.",
        "Don't forget the meeting with {name} tomorrow at {time}",
        "I'll call you after work, ok?",
        "Thanks for {meal} last night, it was great",
        "Your verification code is {code}. Do not share it with anyone.",
        "Did you see the game last night? {team} were unreal",
        "Mum says {meal} is at {time} on Sunday",
        "Free tonight? Want to grab {meal} with {name}?",
        "Your appointment with Dr {name} is confirmed for {day} at {time}.",
        "Can you send me the photos from the trip, {name}?",
        "{name} won the office raffle, a {prize} apparently!",
    ),
}

# ---------------------------------------------------------------------------------------------
# Language identification

_LANG: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "s": ("I", "We", "My sister", "The children", "Our neighbours", "The teacher",
              "My friend", "The manager", "Everyone", "The old man"),
        "v": ("want to buy a new car", "are going to the market", "read the newspaper",
              "cooked dinner for the whole family", "missed the last train",
              "is working from home", "forgot the keys at the office",
              "would like a cup of coffee", "have never seen the sea", "will visit the museum"),
        "t": ("today", "tomorrow morning", "every weekend", "last night", "after lunch",
              "in the summer", "next week", "before the meeting", "on Sunday",
              "as soon as possible"),
        "g": ("Good morning, how are you?", "Thank you very much for your help", "See you later",
              "Where is the train station?", "What time does the shop close?",
              "Nice to meet you", "Could you repeat that, please?", "I don't understand"),
    },
    "es": {
        "s": ("Yo", "Nosotros", "Mi hermana", "Los niños", "Nuestros vecinos", "La profesora",
              "Mi amigo", "El gerente", "Todo el mundo", "El anciano"),
        "v": ("quiere comprar un coche nuevo", "vamos al mercado", "lee el periódico",
              "preparó la cena para toda la familia", "perdió el último tren",
              "trabaja desde casa", "olvidó las llaves en la oficina",
              "quisiera una taza de café", "nunca ha visto el mar", "visitará el museo"),
        "t": ("hoy", "mañana por la mañana", "cada fin de semana", "anoche", "después de comer",
              "en verano", "la próxima semana", "antes de la reunión", "el domingo",
              "lo antes posible"),
        "g": ("Buenos días, ¿cómo estás?", "Muchas gracias por tu ayuda", "Hasta luego",
              "¿Dónde está la estación de tren?", "¿A qué hora cierra la tienda?",
              "Encantado de conocerte", "¿Puede repetirlo, por favor?", "No entiendo"),
    },
    "fr": {
        "s": ("Je", "Nous", "Ma sœur", "Les enfants", "Nos voisins", "La professeure", "Mon ami",
              "Le directeur", "Tout le monde", "Le vieil homme"),
        "v": ("veut acheter une nouvelle voiture", "allons au marché", "lit le journal",
              "a préparé le dîner pour toute la famille", "a raté le dernier train",
              "travaille à la maison", "a oublié les clés au bureau",
              "voudrait une tasse de café", "n'a jamais vu la mer", "visitera le musée"),
        "t": ("aujourd'hui", "demain matin", "chaque week-end", "hier soir",
              "après le déjeuner", "en été", "la semaine prochaine", "avant la réunion",
              "dimanche", "dès que possible"),
        "g": ("Bonjour, comment allez-vous ?", "Merci beaucoup pour votre aide", "À plus tard",
              "Où est la gare ?", "À quelle heure ferme le magasin ?",
              "Enchanté de vous rencontrer", "Pouvez-vous répéter, s'il vous plaît ?",
              "Je ne comprends pas"),
    },
    "de": {
        "s": ("Ich", "Wir", "Meine Schwester", "Die Kinder", "Unsere Nachbarn", "Die Lehrerin",
              "Mein Freund", "Der Chef", "Alle", "Der alte Mann"),
        "v": ("möchte ein neues Auto kaufen", "gehen auf den Markt", "liest die Zeitung",
              "hat das Abendessen für die ganze Familie gekocht", "hat den letzten Zug verpasst",
              "arbeitet von zu Hause", "hat die Schlüssel im Büro vergessen",
              "hätte gern eine Tasse Kaffee", "hat noch nie das Meer gesehen",
              "wird das Museum besuchen"),
        "t": ("heute", "morgen früh", "jedes Wochenende", "gestern Abend",
              "nach dem Mittagessen", "im Sommer", "nächste Woche", "vor der Besprechung",
              "am Sonntag", "so bald wie möglich"),
        "g": ("Guten Morgen, wie geht es Ihnen?", "Vielen Dank für Ihre Hilfe", "Bis später",
              "Wo ist der Bahnhof?", "Wann schließt der Laden?",
              "Freut mich, Sie kennenzulernen", "Können Sie das bitte wiederholen?",
              "Ich verstehe das nicht"),
    },
    "it": {
        "s": ("Io", "Noi", "Mia sorella", "I bambini", "I nostri vicini", "La professoressa",
              "Il mio amico", "Il direttore", "Tutti", "Il vecchio"),
        "v": ("vuole comprare una macchina nuova", "andiamo al mercato", "legge il giornale",
              "ha preparato la cena per tutta la famiglia", "ha perso l'ultimo treno",
              "lavora da casa", "ha dimenticato le chiavi in ufficio",
              "vorrebbe una tazza di caffè", "non ha mai visto il mare", "visiterà il museo"),
        "t": ("oggi", "domani mattina", "ogni fine settimana", "ieri sera", "dopo pranzo",
              "in estate", "la settimana prossima", "prima della riunione", "domenica",
              "il prima possibile"),
        "g": ("Buongiorno, come sta?", "Grazie mille per l'aiuto", "A più tardi",
              "Dov'è la stazione?", "A che ora chiude il negozio?", "Piacere di conoscerti",
              "Può ripetere, per favore?", "Non capisco"),
    },
    "pt": {
        "s": ("Eu", "Nós", "A minha irmã", "As crianças", "Os nossos vizinhos", "A professora",
              "O meu amigo", "O gerente", "Toda a gente", "O velho"),
        "v": ("quer comprar um carro novo", "vamos ao mercado", "lê o jornal",
              "preparou o jantar para toda a família", "perdeu o último comboio",
              "trabalha em casa", "esqueceu as chaves no escritório",
              "gostaria de uma chávena de café", "nunca viu o mar", "vai visitar o museu"),
        "t": ("hoje", "amanhã de manhã", "todos os fins de semana", "ontem à noite",
              "depois do almoço", "no verão", "na próxima semana", "antes da reunião",
              "no domingo", "o mais rápido possível"),
        "g": ("Bom dia, como está?", "Muito obrigado pela ajuda", "Até logo",
              "Onde fica a estação de comboios?", "A que horas fecha a loja?",
              "Prazer em conhecê-lo", "Pode repetir, por favor?", "Não percebo"),
    },
    "nl": {
        "s": ("Ik", "Wij", "Mijn zus", "De kinderen", "Onze buren", "De lerares", "Mijn vriend",
              "De manager", "Iedereen", "De oude man"),
        "v": ("wil een nieuwe auto kopen", "gaan naar de markt", "leest de krant",
              "heeft het avondeten voor de hele familie gekookt", "heeft de laatste trein gemist",
              "werkt thuis", "is de sleutels op kantoor vergeten", "wil graag een kopje koffie",
              "heeft de zee nog nooit gezien", "gaat het museum bezoeken"),
        "t": ("vandaag", "morgenochtend", "elk weekend", "gisteravond", "na de lunch",
              "in de zomer", "volgende week", "voor de vergadering", "op zondag",
              "zo snel mogelijk"),
        "g": ("Goedemorgen, hoe gaat het?", "Heel erg bedankt voor je hulp", "Tot later",
              "Waar is het station?", "Hoe laat gaat de winkel dicht?", "Leuk je te ontmoeten",
              "Kunt u dat herhalen, alstublieft?", "Ik begrijp het niet"),
    },
}

LANGUAGES = tuple(sorted(_LANG))


def langid_corpus(rng: Rng, n: int) -> tuple[list[str], list[str]]:
    """Sentences, greetings and short fragments in seven European languages."""
    templates: dict[str, tuple[str, ...]] = {}
    slots: dict[str, Slot] = {}
    for lang, parts in _LANG.items():
        for key, values in parts.items():
            slots[f"{lang}_{key}"] = values
        templates[lang] = (
            f"{{{lang}_s}} {{{lang}_v}} {{{lang}_t}}.",
            f"{{{lang}_s}} {{{lang}_v}}.",
            f"{{{lang}_t}} {{{lang}_s}} {{{lang}_v}}.",
            f"{{{lang}_g}}",
            f"{{{lang}_t}}",
            f"{{{lang}_s}} {{{lang}_t}}",
        )
    return corpus(rng, templates, slots, n)


# ---------------------------------------------------------------------------------------------
# Help-desk intents

INTENT_SLOTS: dict[str, Slot] = {
    "ordno": lambda rng: "#" + _digits(5)(rng),
    "product": ("the app", "my router", "the dashboard", "the mobile app", "the printer",
                "my account page"),
    "plan": ("premium plan", "annual subscription", "family plan", "pro account",
             "monthly membership"),
    "days": ("3 days", "a week", "two weeks", "10 days"),
    "err": ("error 500", "a blank screen", "'connection timed out'", "error code E42",
            "a spinning wheel forever"),
    "money": ("$19.99", "$120", "€45", "£9.99", "$7.50"),
    "greet": ("Hi,", "Hello,", "Hey there,", "Good morning,", ""),
    "thanks": ("Thanks.", "Thank you!", "Please help.", "Cheers", ""),
}

INTENTS: dict[str, tuple[str, ...]] = {
    "billing_question": (
        "{greet} why was I charged twice this month? {thanks}",
        "{greet} I see an unexpected charge of {money} on my card",
        "Can I get an invoice for my {plan}? {thanks}",
        "How do I update my credit card details?",
        "My bill is higher than usual, can you explain? {thanks}",
        "{greet} which payment methods do you accept?",
        "The VAT on my invoice looks wrong {thanks}",
        "I was billed for the {plan} after I downgraded",
    ),
    "refund_request": (
        "{greet} I want a refund for order {ordno}",
        "The item arrived broken, can I get my money back? {thanks}",
        "How long does a refund take to reach my account?",
        "I returned the package {days} ago and still no refund {thanks}",
        "Please refund the {money} charge, I never used it",
        "Can I return this for a full refund?",
        "{greet} my refund for order {ordno} hasn't arrived",
    ),
    "order_status": (
        "{greet} where is my order {ordno}?",
        "My package was supposed to arrive {days} ago {thanks}",
        "Can you tell me when order {ordno} will ship?",
        "Tracking hasn't updated in {days}",
        "{greet} has my order been dispatched yet?",
        "The courier says delivered but I have nothing {thanks}",
        "Can I change the delivery address for order {ordno}?",
    ),
    "password_reset": (
        "{greet} I forgot my password {thanks}",
        "The reset link in the email doesn't work",
        "{greet} I can't log in to my account",
        "How do I change my password?",
        "I'm locked out after too many attempts {thanks}",
        "Never received the password reset email",
        "Two-factor code isn't arriving, can't sign in {thanks}",
    ),
    "cancel_subscription": (
        "{greet} how do I cancel my {plan}?",
        "Please cancel my subscription effective immediately {thanks}",
        "I want to stop auto-renewal on my {plan}",
        "Cancel my account and delete my data",
        "I no longer need the {plan}, how do I end it? {thanks}",
        "Can I pause my {plan} instead of cancelling?",
    ),
    "technical_issue": (
        "{greet} {product} keeps crashing when I open it",
        "I get {err} when I try to upload a file {thanks}",
        "{product} is really slow since the last update",
        "The page shows {err} {thanks}",
        "Notifications stopped working on {product}",
        "Sync between {product} and my laptop is broken {thanks}",
        "{greet} I can't connect {product} to wifi",
    ),
}

# ---------------------------------------------------------------------------------------------
# Contract clauses

LEGAL_SLOTS: dict[str, Slot] = {
    "party": ("the Supplier", "the Customer", "the Licensee", "the Licensor", "the Company",
              "the Contractor", "each Party", "the Service Provider"),
    "days": ("thirty (30)", "sixty (60)", "ninety (90)", "fourteen (14)", "ten (10)"),
    "state": ("the State of New York", "England and Wales", "the State of Delaware", "Ontario",
              "the Republic of Ireland", "the State of California", "Singapore"),
    "years": ("two (2)", "three (3)", "five (5)"),
    "shall": ("shall", "will"),
    "prefix": ("", "", "", "Section {num}. ", "{num}.1 ", "Notwithstanding the foregoing, ",
               "Subject to Section {num}, "),
    "num": _int_between(2, 18),
}

LEGAL: dict[str, tuple[str, ...]] = {
    "confidentiality": (
        "{prefix}{party} {shall} hold all Confidential Information in strict confidence and "
        "{shall} not disclose it to any third party without the prior written consent of {party}.",
        "{prefix}The obligations of confidentiality in this Section {shall} survive termination "
        "for a period of {years} years.",
        "{prefix}Confidential Information {shall} not include information that is or becomes "
        "publicly available through no fault of the receiving Party.",
        "{prefix}{party} may disclose Confidential Information to its employees and advisers who "
        "need to know it, provided they are bound by obligations of confidentiality.",
        "{prefix}Upon request, {party} {shall} promptly return or destroy all documents "
        "containing Confidential Information.",
    ),
    "termination": (
        "{prefix}Either Party may terminate this Agreement upon {days} days' written notice to "
        "the other Party.",
        "{prefix}{party} may terminate this Agreement immediately if {party} commits a material "
        "breach and fails to remedy it within {days} days of notice.",
        "{prefix}This Agreement {shall} terminate automatically if either Party becomes "
        "insolvent or enters into liquidation.",
        "{prefix}Upon termination, all licences granted to {party} under this Agreement {shall} "
        "immediately cease.",
        "{prefix}Termination {shall} not affect any rights or remedies of {party} accrued prior "
        "to the date of termination.",
    ),
    "indemnification": (
        "{prefix}{party} {shall} indemnify, defend and hold harmless {party} from and against "
        "any and all claims, losses, damages and expenses arising out of any breach of this "
        "Agreement.",
        "{prefix}{party} {shall} indemnify {party} against any third-party claim alleging that "
        "the Deliverables infringe any intellectual property right.",
        "{prefix}The indemnified Party {shall} give prompt written notice of any claim and allow "
        "{party} to control the defence and settlement.",
        "{prefix}{party} {shall} reimburse reasonable attorneys' fees incurred by {party} in "
        "connection with any indemnified claim.",
    ),
    "governing_law": (
        "{prefix}This Agreement {shall} be governed by and construed in accordance with the "
        "laws of {state}.",
        "{prefix}The courts of {state} {shall} have exclusive jurisdiction over any dispute "
        "arising out of or in connection with this Agreement.",
        "{prefix}Any dispute {shall} be finally resolved by binding arbitration seated in "
        "{state}.",
        "{prefix}The Parties irrevocably submit to the jurisdiction of the courts of {state}.",
        "{prefix}The United Nations Convention on Contracts for the International Sale of Goods "
        "{shall} not apply to this Agreement, which is governed by the laws of {state}.",
    ),
    "payment_terms": (
        "{prefix}{party} {shall} pay all undisputed invoices within {days} days of the invoice "
        "date.",
        "{prefix}Late payments by {party} {shall} bear interest at the rate of 1.5% per month or "
        "the maximum rate permitted by law.",
        "{prefix}All fees are exclusive of VAT and other applicable taxes, which {shall} be paid "
        "by {party}.",
        "{prefix}{party} may suspend the Services if any amount remains unpaid {days} days after "
        "its due date.",
        "{prefix}Fees {shall} be invoiced annually in advance and are non-refundable except as "
        "expressly provided herein.",
    ),
    "limitation_of_liability": (
        "{prefix}In no event {shall} {party} be liable for any indirect, incidental, special or "
        "consequential damages, including loss of profits.",
        "{prefix}The total aggregate liability of {party} under this Agreement {shall} not "
        "exceed the fees paid in the twelve (12) months preceding the claim.",
        "{prefix}Nothing in this Agreement {shall} limit the liability of {party} for death or "
        "personal injury caused by negligence or for fraud.",
        "{prefix}{party} {shall} have no liability for any loss of data except to the extent "
        "caused by its wilful misconduct.",
    ),
    "force_majeure": (
        "{prefix}Neither Party {shall} be liable for any delay or failure to perform caused by "
        "events beyond its reasonable control, including fire, flood, war, epidemic or acts of "
        "government.",
        "{prefix}If a Force Majeure Event continues for more than {days} days, either Party may "
        "terminate this Agreement by written notice.",
        "{prefix}The affected Party {shall} promptly notify {party} of the Force Majeure Event "
        "and use reasonable efforts to mitigate its effects.",
        "{prefix}Strikes, labour disputes and failures of public utilities {shall} constitute "
        "events of force majeure for {party}.",
    ),
}

# ---------------------------------------------------------------------------------------------
# Entity spans

_FIRST = ("Maria", "James", "Aisha", "Kenji", "Olga", "Liam", "Sofia", "Mateo", "Priya", "Chen",
          "Fatima", "Lucas", "Emma", "Noah", "Zara", "Ivan", "Amara", "Diego", "Hannah", "Yuki")
_LAST = ("Lopez", "Smith", "Okafor", "Watanabe", "Ivanova", "Murphy", "Rossi", "Garcia", "Patel",
         "Wei", "Haddad", "Silva", "Schmidt", "Johnson", "Khan", "Petrov", "Mensah", "Torres",
         "Becker", "Tanaka")
_STEM = ("Acme", "Globex", "Initech", "Northwind", "Contoso", "Umbrella", "Vandelay", "Stark",
         "Wayne", "Hooli", "Cyberdyne", "Soylent", "Tyrell", "Oscorp", "Wonka", "Aperture")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")

ENTITY_SLOTS: dict[str, Slot] = {
    "F": _FIRST,
    "L": _LAST,
    "f": tuple(x.lower() for x in _FIRST),
    "l": tuple(x.lower() for x in _LAST),
    "I": tuple("ABCDEFGHJKLMNPRSTW"),
    "S": _STEM,
    "s": tuple(x.lower() for x in _STEM),
    "X": ("Corp", "Inc.", "LLC", "Ltd", "GmbH", "Group", "Holdings", "Industries", "Labs", "Bank",
          "Logistics", "Partners", "S.A.", "Technologies"),
    "tld": ("com", "io", "co.uk", "de", "org", "net"),
    "freemail": ("gmail.com", "outlook.com", "yahoo.com", "proton.me"),
    "city": ("San Francisco", "Berlin", "Lagos", "Tokyo", "São Paulo", "Toronto", "Mumbai",
             "Paris", "Nairobi", "Sydney", "Madrid", "Seoul", "Chicago", "Amsterdam", "Cairo",
             "Lima"),
    "country": ("Germany", "Nigeria", "Japan", "Brazil", "Canada", "India", "France", "Kenya",
                "Australia", "Spain", "South Korea", "USA", "Netherlands", "Egypt", "Peru"),
    "d2": _digits(2),
    "d3": _digits(3),
    "d4": _digits(4),
    "n": _int_between(1, 999),
    "yyyy": _int_between(1990, 2031),
    "mm": lambda rng: f"{rng.randint(1, 12):02d}",
    "dd": lambda rng: f"{rng.randint(1, 28):02d}",
    "day": _int_between(1, 28),
    "Month": _MONTHS,
    "Mon": tuple(m[:3] for m in _MONTHS),
    "Weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "path": ("pricing", "docs", "login", "careers", "blog", "v2", "support", "api"),
    "word": (
        "the", "invoice", "meeting", "please", "confirm", "attached", "tomorrow", "regarding",
        "thanks", "schedule", "contract", "call", "report", "update", "project", "budget",
        "deadline", "next", "week", "shipment", "team", "review", "and", "with", "for", "about",
        "payment", "office", "Hello", "Regards", "Please", "Thanks", "Dear", "Best", "Hi",
        "kind regards", "see attached", "as discussed", "the draft", "our call", "Q3", "v2.1",
        "ASAP", "FYI", "per", "order", "quote", "delivery", "total", "amount", "signed",
    ),
}

ENTITIES: dict[str, tuple[str, ...]] = {
    "PERSON": ("{F} {L}", "{I}. {L}", "Dr. {F} {L}", "Ms. {L}", "Mr. {L}", "{L}, {F}",
               "{F} {I}. {L}", "{F}"),
    "ORG": ("{S} {X}", "{S} {S} {X}", "The {S} Company", "{S}", "{S} & {S}"),
    "LOCATION": ("{city}", "{city}, {country}", "{country}"),
    "EMAIL": ("{f}.{l}@{s}.{tld}", "{f}{d2}@{freemail}", "{f}{l}@{s}.{tld}", "support@{s}.{tld}",
              "billing@{s}.{tld}", "{l}_{f}@{freemail}"),
    "PHONE": ("+1 {d3} {d3} {d4}", "({d3}) {d3}-{d4}", "+44 20 {d4} {d4}", "0{d3} {d3} {d4}",
              "+49 30 {d4}{d4}", "{d3}-{d3}-{d4}", "+81 3-{d4}-{d4}"),
    "DATE": ("{yyyy}-{mm}-{dd}", "{dd}/{mm}/{yyyy}", "{Month} {day}, {yyyy}", "{day} {Mon} {yyyy}",
             "{Mon} {day}", "{dd}.{mm}.{yyyy}", "{Weekday}, {day} {Month}"),
    "MONEY": ("${n},{d3}.{d2}", "€{n}", "£{n}.{d2}", "USD {n}", "{n} EUR", "${n}k",
              "¥{n},000", "$ {n}.99"),
    "URL": ("https://www.{s}.{tld}", "https://{s}.io/{path}", "http://{s}.{tld}/{path}/{path}",
            "www.{s}.co.uk", "{s}.{tld}/{path}"),
    "O": ("{word}", "{word}", "{word} {word}", "{n}"),
}
# fmt: on
