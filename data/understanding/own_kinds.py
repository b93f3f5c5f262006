"""More of Switchyard's own prompts labelled by kind, composed from
hand-written parts, for the kinds public sources label in one template
style only or not at all: word problems as `math`, everyday logic as
`reasoning`, role-play and open conversation as `chat`, science and
humanities questions as `qa`, and requests to extract, summarise, classify
and translate phrased as people phrase them.

Written for this project and licensed with it (Apache-2.0). `build()` is
deterministic: parts are combined by index. pack.py checks that no 8-word
run is shared with `dev_pairs.jsonl`.
"""

NAMES = ["Maya", "Tom", "Priya", "Diego", "Aisha", "Lukas", "Mei", "Omar", "Sofia", "Kwame", "Elena", "Raj"]
ITEMS = ["apples", "stickers", "marbles", "books", "cupcakes", "pencils", "tickets", "shells", "cards", "cookies"]
PLACES = ["the market", "school", "the library", "the bakery", "the fair", "the zoo", "the store"]

MATH_WORD = [
    "{n1} has {a} {item}. She buys {b} more and gives {c} to a friend. How many {item} does she have now?",
    "{n1} earns ${a} a week and saves a quarter of it. How much has he saved after {c} weeks?",
    "A train travels at {b} km per hour for {c} hours, then at {a} km per hour for 2 hours. How far does it go in total?",
    "{n1} and {n2} share {a} {item} in the ratio {c}:{d}. How many does {n2} get?",
    "A shop sells {item} at ${c} each, or {d} for ${e}. How much does {n1} save buying {f} with the offer?",
    "At {place}, {n1} spent ${a} on food and ${b} on rides, which was {p}% of the money she brought. How much did she bring?",
    "A rectangle's length is {c} cm more than its width, and its perimeter is {g} cm. What is its area?",
    "{n1} reads {c} pages on Monday and twice as many each following day. How many pages has she read by Thursday?",
    "A tank holds {a} litres and drains at {c} litres a minute while a tap fills it at {d} litres a minute. How long until it is empty?",
    "There are {a} students at a school; {p}% walk to school and a third of the rest take the bus. How many take the bus?",
    "{n1} is {c} years older than {n2}. In {d} years their ages will add up to {g}. How old is {n2} now?",
    "A recipe needs {d} eggs for {c} pancakes. How many eggs does {n1} need for {f} pancakes?",
    "If {c} workers build a wall in {a} hours, how long would {f} workers take at the same pace?",
    "A jacket costs ${a} and is discounted by {p}%, then taxed at 8%. What does {n1} pay?",
    "{n1} runs {c} laps of a {b} m track each day. How many kilometres does she run in {d} weeks?",
    "The price of a ticket to {place} rose from ${c} to ${e}. By what percentage did it rise?",
]
REASONING = [
    "If every {item} in the box is red and this one came from the box, what colour is it?",
    "{n1} is older than {n2}, and {n2} is older than {n3}. Who is the youngest?",
    "A clock shows 3:15. What is the angle between the hour and minute hands?",
    "{n1} always lies and {n2} always tells the truth. One of them says 'I am the liar'. Who said it?",
    "If no reptiles have fur and all snakes are reptiles, can a snake have fur? Explain.",
    "Which is the odd one out: {item}, {item2}, Tuesday, {item3}? Why?",
    "I have a brother and a sister; my sister has two brothers. How many children are in the family?",
    "If the day before yesterday was Saturday, what day will it be in three days?",
    "A bat and a ball cost $1.10 together, and the bat costs $1 more than the ball. What does the ball cost? Think it through.",
    "{n1} finished ahead of {n2} but behind {n3}; {n4} finished last. Give the finishing order.",
    "Is this argument valid? All birds can fly; penguins are birds; so penguins can fly.",
    "What comes next in the pattern: {c}, {c2}, {c4}, {c8}, ...? Explain the rule.",
    "A farmer must cross a river with a wolf, a goat and a cabbage, taking one at a time. How does he do it?",
    "If some managers are engineers and all engineers like puzzles, must some managers like puzzles?",
    "Two coins add up to 30 cents and one of them is not a nickel. What are the coins?",
    "Rank these from lightest to heaviest using the clues: the {item} is heavier than the {item2}, and the {item3} is lighter than the {item2}.",
]
CHAT = [
    "Pretend you are a pirate captain and greet me as I come aboard.",
    "Let's play a game: you are a detective and I am a suspect. Start the interview.",
    "Act as my friendly neighbour and chat with me about the garden.",
    "You're a barista at a busy cafe; take my order.",
    "Be a medieval innkeeper and tell me about the rooms you have tonight.",
    "Roleplay as a tour guide welcoming me to {place}.",
    "I'd love some company while I cook dinner, just chat with me.",
    "How was your day? Mine was full of meetings.",
    "Tell me about yourself, what do you enjoy talking about?",
    "I'm feeling a bit down today, can we talk?",
    "Imagine you are a cat and describe your morning to me.",
    "Hey {n1} here! What's a fun fact you like?",
    "You are a grumpy old wizard; I knock on your tower door.",
    "Chat with me like an old friend catching up after years.",
    "Let's just talk about movies for a while, what kinds do you like?",
    "Be my study buddy and keep me motivated tonight.",
]
QA = [
    "What is photosynthesis and why do plants need it?", "How does a rainbow form?",
    "What caused the fall of the Roman Empire?", "Who was Cleopatra?",
    "What is the difference between weather and climate?", "How do vaccines work?",
    "What was the Renaissance?", "Why do we have leap years?", "What is an atom made of?",
    "Who invented the printing press and when?", "What does DNA do in a cell?",
    "How do earthquakes happen?", "What is the theory of evolution in simple terms?",
    "What were the main causes of World War I?", "How does the stock market work?",
    "What is the speed of sound in air?", "Who was Confucius and what did he teach?",
    "What is a black hole?", "Why did the Industrial Revolution start in Britain?",
    "What is the function of the kidneys?", "How do tides work?", "What is impressionism in painting?",
    "What does a central bank do?", "Which gas makes up most of Earth's atmosphere?",
    "How does electricity reach our homes?", "What is the Magna Carta?",
]
EXTRACTION = [
    "List the names of all the people in this paragraph: {n1} met {n2} and {n3} at {place} on Friday.",
    "From this email, pull out the meeting time and room: 'See you at 2:30 pm in room 4B, {n1}.'",
    "What are the quantities in this order: {c} {item}, {d} {item2} and {f} {item3}?",
    "Find every date mentioned here: the lease runs from 1 May 2024 to 30 April 2025, with a review on 1 November.",
    "Get the sender, subject and deadline out of this message and give them as JSON.",
    "Which companies are mentioned in this article snippet: 'Acme and Globex announced a deal, while Initech declined to comment.'",
    "Pull the key figures from this report: revenue $4.2m, costs $3.1m, 18 staff, 3 offices.",
    "Extract the street, city and postcode from: 221B Baker Street, London NW1 6XE.",
    "Make a table of the products and their prices mentioned in this text.",
    "Identify the main characters and the setting in this short passage.",
    "What temperatures appear in this forecast: highs of 24 on Monday, 19 on Tuesday and 21 on Wednesday?",
    "Give me just the hashtags from this post: loving the sun #summer #beach #holiday",
]
SUMMARIZE = [
    "Can you summarise this article for me in three sentences?",
    "Give me a short summary of the meeting notes below.",
    "What's the main point of this paragraph? {short}",
    "Write a one-line summary of this review: {short}",
    "Summarize the key arguments of this essay.",
    "Condense this report into bullet points for my manager.",
    "Tell me briefly what this passage says: {short}",
    "I don't have time to read this, what does it say? {short}",
    "Produce an executive summary of the document below.",
    "Recap the story so far in a paragraph.",
]
CLASSIFY = [
    "Is this message a complaint, a question or praise? '{review}'",
    "Tag this ticket as billing, technical or account: 'I can't log in since the update.'",
    "Which category fits this product best: electronics, garden or toys? '{item} set for kids'",
    "Label the tone of this sentence as formal or informal: 'hey whats up'",
    "Decide if this headline is clickbait or not: 'You won't believe what happened next'",
    "Sort these words into nouns and verbs: run, table, swim, chair, write.",
    "Is the following review positive, negative or mixed? '{review}'",
    "Classify these animals as herbivores or carnivores: lion, cow, shark, rabbit.",
    "Which genre is this book blurb: mystery, romance or science fiction?",
    "Mark each sentence as true or false: the sun is a star; fish can fly.",
]
TRANSLATE = [
    "Can you translate this sentence into {lang}? {short}",
    "Please put this into {lang}: {short}",
    "What would this be in {lang}? '{short}'",
    "Translate the following paragraph from English to {lang}.",
    "I need this email in {lang}, keep it polite: {short}",
    "Translate to English: '{foreign}'",
]
SHORT = [
    "The meeting starts at nine tomorrow.", "Our new office opens next month.", "The food was great but the service was slow.",
    "Please remember to bring your ID.", "The project is two weeks behind schedule.", "We are closed on public holidays.",
]
REVIEWS = ["The battery died after a week.", "Absolutely love it, five stars!", "It's fine, nothing special.",
           "Why does the app keep crashing?", "Thanks for the quick delivery!"]
LANGS = ["French", "Spanish", "German", "Italian", "Japanese", "Portuguese", "Dutch"]
FOREIGN = ["Où est la gare ?", "Ich möchte einen Kaffee, bitte.", "¿Qué hora es?", "Grazie mille per l'aiuto."]


def fill(t, i):
    n = 7 + (i * 13) % 40
    vals = {
        "a": 20 + (i * 37) % 180, "b": 30 + (i * 11) % 70, "c": 2 + i % 9, "d": 3 + (i * 5) % 7,
        "e": 10 + (i * 3) % 20, "f": 5 + (i * 7) % 20, "g": 40 + (i * 17) % 100, "p": [10, 20, 25, 40, 75][i % 5],
        "c2": 2 * (2 + i % 9), "c4": 4 * (2 + i % 9), "c8": 8 * (2 + i % 9), "n": n,
    }
    for k, v in vals.items():
        t = t.replace("{" + k + "}", str(v))
    parts = {
        "n1": NAMES[i % 12], "n2": NAMES[(i + 3) % 12], "n3": NAMES[(i + 6) % 12], "n4": NAMES[(i + 9) % 12],
        "item": ITEMS[i % 10], "item2": ITEMS[(i + 4) % 10], "item3": ITEMS[(i + 7) % 10], "place": PLACES[i % 7],
        "short": SHORT[i % 6], "review": REVIEWS[i % 5], "lang": LANGS[i % 7], "foreign": FOREIGN[i % 4],
    }
    for k, v in parts.items():
        t = t.replace("{" + k + "}", v)
    return t


def build():
    """(kind, prompt) rows."""
    out = []
    for kind, templates, per in (
        ("math", MATH_WORD, 64), ("reasoning", REASONING, 32), ("chat", CHAT, 32), ("qa", QA, 26),
        ("extraction", EXTRACTION, 24), ("summarize", SUMMARIZE, 20), ("classification", CLASSIFY, 20),
        ("translation", TRANSLATE, 18),
    ):
        seen = set()
        for i in range(per):
            p = fill(templates[i % len(templates)], i + i // len(templates))
            if p not in seen:
                seen.add(p)
                out.append((kind, p))
    return out


if __name__ == "__main__":
    from collections import Counter

    rows = build()
    print(len(rows), Counter(k for k, _ in rows))
