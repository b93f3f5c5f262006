"""Switchyard's own easy and hard requests of every kind, composed from
hand-written parts: the difficulty score's main labels, and user-phrased
examples for the kind classifier.

Written for this project and licensed with it (Apache-2.0). An easy request
is one a small model answers acceptably; a hard one needs a strong model
(several constraints, a proof, a design with trade-offs, deep domain
knowledge, a long chain of steps). `build()` is deterministic: parts are
combined by index, never at random.

None of these parts is taken from `dev_pairs.jsonl`, which is kept apart for
evaluation (pack.py checks that no 8-word run is shared, and its parts were reworded where one came close).
"""

LANGS = ["Python", "JavaScript", "Go", "Rust", "Java", "TypeScript", "C#", "Ruby", "Kotlin", "C++", "PHP", "Swift"]

CODE_EASY_OPS = [
    "reverse a list", "read a text file line by line", "convert a string to uppercase", "test whether a number is even",
    "get the length of an array", "join a list of strings with commas", "find the maximum of three numbers",
    "remove duplicates from a list", "format a date as YYYY-MM-DD", "print the numbers from 1 to 10",
    "test whether a string is empty", "concatenate two strings", "swap two variables", "round a float to two decimals",
    "count the words in a sentence", "parse an integer from a string", "loop over a dictionary's keys",
    "append an item to a list", "get the current time", "see whether a file exists",
]
CODE_EASY = [
    "How can I {op} in {lang}?", "Write a {lang} snippet to {op}.", "What's the simplest way to {op} in {lang}?",
    "Show me how to {op} using {lang}.", "quick {lang} question: how can I {op}?", "In {lang}, how would you {op}?",
    "Give me a one-liner in {lang} to {op}.", "Can you write {lang} code that will {op}?",
]
CODE_HARD_TASKS = [
    "a write-ahead log with group commit and crash recovery that never loses an acknowledged record",
    "a concurrent hash map with lock striping and online resizing that readers never block on",
    "an incremental garbage collector with a tri-colour invariant and a write barrier",
    "a rate limiter shared across a fleet of servers that stays correct when the clock skews and a node partitions",
    "a query planner that reorders joins by estimated cardinality and explains each choice",
    "a CRDT-based collaborative text editor backend that merges concurrent edits without a central server",
    "a type checker for a small functional language with let-polymorphism (Hindley-Milner) and good error messages",
    "an async runtime with a work-stealing scheduler, timers and cancellation",
    "a Raft log replication module with snapshotting and membership changes",
    "a memory allocator with size classes and thread-local caches that returns memory to the OS",
    "a regex engine that compiles to a DFA lazily and guarantees linear time on every input",
    "a distributed job queue with exactly-once processing semantics across worker crashes",
    "a streaming JSON parser that handles arbitrarily large documents in constant memory and reports the byte offset of each error",
    "an LSM-tree storage engine with leveled compaction, bloom filters and range deletes",
    "a zero-copy network protocol decoder that is safe against malformed and hostile input",
    "a deterministic simulation test harness that injects network partitions and disk faults into a replicated service",
]
CODE_HARD = [
    "Implement {task} in {lang}, explain the invariants it relies on, and write tests that would catch a violation.",
    "Design and write {task} in {lang}. Discuss the trade-offs against two alternative designs and the failure modes under load.",
    "I need {task} in {lang}. Prove the key correctness property informally, analyse its time and space complexity, and list the edge cases.",
    "Build {task} using {lang}; it must be thread-safe, benchmark it against a naive version, and explain the memory ordering or locking choices.",
    "Our production system needs {task}. Write it in {lang}, handle every error path, and explain how you would verify it under fault injection.",
    "Architect {task} for a team that will run it in {lang} at 50k requests per second, then implement the core and justify each data structure.",
]
CODE_HARD_DEBUG = [
    "This {lang} service leaks memory only in production after about six hours, heap snapshots show growing closures held by an event emitter, and it never reproduces locally. Work out the likely causes, how to prove which one it is, and the fix.",
    "Our {lang} microservice returns stale reads roughly once in ten thousand requests after we added a read replica and a cache in front of it. Diagnose the consistency bug across the cache invalidation and replication lag, and redesign the read path so it is linearizable where it must be.",
    "A {lang} batch job that used to take 20 minutes now takes four hours after a dependency upgrade, CPU is idle and the database shows lock waits. Give a systematic plan to find the regression and explain the concurrency problem you suspect.",
    "Refactor this 3,000-line {lang} module with global mutable state into testable components without changing behaviour, keeping the public API stable, and explain the order of the steps so every commit stays releasable.",
]

MATH_EASY = [
    "What is {a} + {b}?", "What is {a} times {c}?", "Subtract {c} from {a}.", "What is {p}% of {a}?",
    "Is {n} a prime number?", "What is the square root of {sq}?", "Round {a}.{c} to the nearest whole number.",
    "What is {a} divided by {c}?", "Convert {c} hours into minutes.", "Double {a}.",
    "Sam had {c} pencils and gave away {d}. How many does Sam keep?", "What is {c} squared?",
    "A shirt costs ${a}. How much do {d} shirts cost?", "What is the perimeter of a square with side {c} cm?",
]
MATH_HARD = [
    "Prove that for every integer n greater than {d}, the number n^{d} - n is divisible by {d}, and explain which step would fail for a composite exponent.",
    "Count the lattice points inside the ellipse x^2/{c}^2 + y^2/{d}^2 < 1 exactly, then derive an asymptotic formula for large semi-axes with an error bound.",
    "A random walk on the integers starts at 0 and moves +1 with probability {pp} and -1 otherwise. Derive the probability that it ever reaches {c} before -{d}, and the mean duration of the walk.",
    "Show that the sequence defined by a_1 = 1 and a_(n+1) = a_n + 1/a_n grows like sqrt(2n), and bound the error term.",
    "Compute the Fourier series of the sawtooth wave f(x) = x on (-pi, pi), prove it converges pointwise away from the jumps, and use it to sum 1/n^2.",
    "How many ways can {c} people be seated around a round table so that no two of {d} particular people sit next to each other? Derive the count with inclusion-exclusion and check a small case.",
    "Let f be continuous on [0,1] with the integral of f(x) x^k equal to 0 for k = 0..{d}. Prove that f has at least {dp} roots in (0,1).",
    "Show that every planar graph is 6-colourable by a degeneracy argument, then prove 5 colours suffice, and explain why the same proof cannot give four.",
    "A factory's machines fail independently at a rate of {d} per 1000 hours and take an exponentially distributed time to repair. Model the number of working machines as a Markov chain and find its stationary distribution for {c} machines and two repair crews.",
    "Determine for which primes p the congruence x^2 = {d} (mod p) has a solution, using quadratic reciprocity, and prove the rule.",
]

REASONING_EASY = [
    "All roses are flowers. Is this rose a flower?", "Is noon before or after 11 am?",
    "If today is {day}, what day is tomorrow?", "Does a triangle have more sides than a square?",
    "Tom is taller than Sam. Sam is taller than Ann. Who is the shortest?",
    "If I put ice in the sun, what happens?", "What is the next number: 2, 4, 6, 8?",
    "Which is bigger, {a} or {b}?", "If a train leaves at 3 pm and the trip takes 2 hours, when does it arrive?",
    "Can a person be in two places at once?", "If it's {day} today, what day was yesterday?",
]
REASONING_HARD = [
    "Seven suspects each make two statements, exactly one of which is true for the guilty person and both true for everyone else. Given the statements below, deduce who is guilty and show that the solution is unique: {clues}",
    "A school district finds that test scores fell after a reform, but the share of students from low-income families also doubled. Build a quantitative argument separating the reform's effect from the change in intake, and state which data would make the conclusion robust.",
    "Our monitoring shows latency rose after the deploy, but also the traffic mix changed and a dependency had an incident the same hour. Lay out a causal argument for what most likely caused the regression, what evidence would rule each hypothesis out, and in what order to check.",
    "On an island, knights always tell the truth and knaves always lie. Of {c} inhabitants, each says how many of the others are knaves, and the answers are {clues}. Determine everyone's type and prove no other assignment works.",
    "Evaluate this argument for hidden assumptions and logical fallacies: 'Every successful startup had a charismatic founder, so investors should only back charismatic founders.' Then construct the strongest version of it and say what evidence would settle it.",
    "Twelve coins look alike, one is counterfeit and is either lighter or heavier. With a balance and three weighings, find it and say whether it is lighter or heavier. Give the full decision tree and argue why three weighings are necessary.",
    "Two teams estimate a project at 3 months and 9 months from the same spec. Reason about which sources of disagreement are most likely, how to reconcile the estimates, and how confident anyone should be in the final number.",
]

PLANNING_EASY = [
    "Plan my {slot} tomorrow: gym, groceries and a call with mum.", "List the chores for cleaning my room.",
    "What should I pack for a weekend trip to the beach?", "Suggest a simple dinner for two tonight.",
    "Give me a plan for a relaxing {day}.", "Make a shopping list for spaghetti bolognese.",
    "What order should I do laundry, dishes and vacuuming in?",
    "Organise a board-game evening with friends this {day}.", "Help me schedule three study sessions this week.",
]
PLANNING_HARD = [
    "Plan the migration of {sys} to {target} for {n_teams} teams over two quarters, with phases, dependencies, owners, success criteria, a rollback path at every phase and the risks that could stop it.",
    "Draw up a capacity and rollout plan for expanding {sys} in three new regions with data-residency rules, including load tests, failover drills and the criteria to proceed in each region.",
    "Create a 6-month plan to cut our cloud bill by 30% without hurting latency SLOs, sequencing the work by risk and payoff, with how each saving is measured and who signs off.",
    "Plan the cut-over of {sys} to {target} while it keeps serving, with dual writes, backfill, verification, the order of the switch, and what we do if the data disagrees halfway.",
    "Lay out the programme to get {n_teams} product teams onto a shared platform in a year: milestones, staffing, the migration order of services, dependencies between teams, and how to keep feature work going.",
    "Plan an incident-response readiness programme for a payments company: on-call structure, runbooks, game days, regulatory notifications and how maturity is measured quarter by quarter.",
]

WRITING_EASY = [
    "Write a short thank-you message to my {who}.", "Write a little rhyme about {thing}.",
    "Write a one-sentence caption for a photo of {thing}.", "Draft a quick reminder email about tomorrow's meeting.",
    "Write a friendly birthday wish for my {who}.", "Write a post saying our shop has a new {thing} menu.",
    "Give me a catchy title for a blog post about {thing}.", "Write a two-sentence apology for a late reply.",
    "Write a haiku about {thing}.", "Write a polite note declining a party invitation.",
]
WRITING_HARD = [
    "Write a long literary short story about {thing} told in second person, with two interleaved timelines that converge in the final scene, and a motif that changes meaning by the end.",
    "Draft a persuasive policy essay on {topic} for a sceptical audience: steelman the opposing view, answer it with evidence, and end with a concrete, costed proposal.",
    "Write the opening chapter of a mystery novel set in {place}, introducing five suspects with distinct voices, planting three fair clues the reader can spot on a second read.",
    "Write a sonnet sequence of three Petrarchan sonnets about {thing}, strict iambic pentameter and rhyme scheme, where each sonnet answers the one before it.",
    "Rewrite this technical design document on {topic} for three audiences at once, executives, engineers and customers, keeping every claim consistent and noting what each audience must decide.",
    "Write a screenplay scene in which two estranged siblings argue about {topic} without either of them saying what they really mean; the subtext must carry the scene.",
]

SUMMARIZE_EASY = [
    "Summarize this in one sentence: {short}", "TL;DR: {short}", "Boil this down: {short}",
    "Sum this up in a few words: {short}", "Shorten this: {short}",
]
SUMMARIZE_HARD = [
    "Summarize the attached 60-page {doc} for the board: the decisions it asks for, the evidence behind each, the risks it understates, and where its figures contradict each other.",
    "Read these twelve customer interviews and write a synthesis: recurring needs ranked by how often and how strongly they appear, disagreements between segments, and direct quotes that support each finding.",
    "Write a sectioned digest of this {doc}: methods, main results with their confidence intervals, limitations the authors admit and ones they do not, and how it changes the prior literature.",
    "Summarize the whole discussion thread below (200 messages across three weeks) into the decisions made, the open questions, who owns each, and where the thread reversed an earlier decision.",
]

EXTRACTION_EASY = [
    "Extract the email address from this text: {contact}", "What is the phone number in this message? {contact}",
    "Pull out the date from: The party is on {date}.", "Find the name in this sentence: {person} called yesterday.",
    "How much does the lamp cost? The lamp costs ${a}.", "What is the order number? Your order {order} has shipped.",
]
EXTRACTION_HARD = [
    "From the {doc} below, extract every obligation, who owes it to whom, its deadline and its penalty, as JSON following this schema, and flag obligations that conflict with each other or depend on an undefined term.",
    "Extract a normalised table of all medications, doses, frequencies and start and stop dates from these discharge notes, resolving abbreviations and noting where two notes disagree.",
    "Parse these 500 free-text bank transaction descriptions into merchant, category, location and whether it is recurring, handling the inconsistent formats and explaining the rules you inferred.",
    "From this {doc}, extract each claim with its supporting evidence and the page it appears on, and mark claims whose evidence is only cited elsewhere.",
]

CLASSIFICATION_EASY = [
    "Is this review positive or negative? '{review}'", "Is this email spam? '{spam}'",
    "What is the sentiment of: '{review}'", "Classify this as a question or a statement: '{review}'",
    "Which language is this: '{foreign}'", "Is this about sports or politics? '{headline}'",
]
CLASSIFICATION_HARD = [
    "Sort these 40 clinical trial adverse-event reports into MedDRA system organ classes, explain the borderline cases, and say which reports need a human reviewer and why.",
    "Label these customer messages with intent, urgency and churn risk using our 22-category taxonomy; where a message fits two categories, apply the precedence rules and justify the choice.",
    "Decide for each of these contract clauses whether it is a limitation of liability, an indemnity or a warranty under English law, citing the wording that decides it and noting clauses that are ambiguous.",
    "Classify these code review comments as blocking, non-blocking or nit, inferring severity from context across the thread, and report where reviewers disagree about severity.",
]

QA_EASY = [
    "What is the capital of {country}?", "Who wrote {book}?", "Name a food a {animal} likes.",
    "What colour is {thing2}?", "What language do they speak in {country}?", "When is Christmas?",
    "How many days are in {month}?", "What is the currency of {country}?", "What does a {animal} eat?",
    "Is {country} in Europe?",
]
QA_HARD = [
    "Why did {event} happen when it did and not a decade earlier? Weigh the economic, technological and political explanations and say which evidence favours each.",
    "Explain how {mech} works at the level of a graduate textbook, including the equations that govern it and the conditions under which the usual approximation breaks down.",
    "Compare {a_sys} and {b_sys} for a system with strict latency requirements and frequent network partitions: consistency guarantees, failure behaviour, operational cost, and which you would pick for which workload.",
    "What does current research say about {topic}? Distinguish well-replicated findings from contested ones, and say what experiment would resolve the main open question.",
]

TRANSLATION_EASY = [
    "Translate '{phrase}' into {tlang}.", "Say '{phrase}' in {tlang}.", "What is '{phrase}' in {tlang}?",
    "Translate to {tlang}: {phrase}", "{phrase} -- in {tlang} please",
]
TRANSLATION_HARD = [
    "Translate this {genre} into {tlang}, preserving the register, the wordplay in the second paragraph and the defined terms, and add translator's notes where no equivalent exists.",
    "Translate the following software licence into {tlang} so that it would hold up under local law, keeping defined terms consistent and flagging clauses whose legal effect changes in translation.",
    "Localise this marketing campaign for {tlang}-speaking markets: translate the copy, adapt the idioms and cultural references, keep the slogan's rhyme, and explain each adaptation.",
    "Translate this medical consent form into {tlang} at a reading level a patient can follow, while keeping every legally required statement exact, and list the terms a reviewer must check.",
]

CHAT_EASY = [
    "hey, how are you?", "good night!", "thanks, you're awesome", "what's new with you?", "lol ok",
    "I'm having a great day today", "tell me something fun", "do you like {thing}?", "morning!",
    "I just had the best {thing}", "ugh I'm so tired", "see you later!",
]
CHAT_HARD = [
    "I've been feeling stuck in my career for two years, torn between a stable job I'm good at and retraining as {who2}; talk it through with me, ask the questions a good mentor would, and help me see what I actually want.",
    "My co-founder and I disagree about whether to take venture funding, and it is starting to damage our friendship. Help me understand both positions fairly and plan how to have the conversation without it turning into a fight.",
    "Let's have a long Socratic conversation about whether free will is compatible with determinism; push back on my answers and keep track of the positions I've committed to.",
]

SHORT = [
    "The meeting is moved to Friday because the room was double-booked.",
    "Sales were flat this quarter, but costs fell, so profit rose slightly.",
    "The train was delayed by an hour due to a signal failure near the station.",
    "Our team shipped the new login page and fixed two bugs this week.",
    "The park will close early tomorrow for a private event.",
]
FILL = {
    "who": ["neighbour", "teacher", "boss", "sister", "friend", "colleague"],
    "who2": ["a nurse", "a data scientist", "a carpenter", "a teacher"],
    "thing": ["autumn leaves", "coffee", "the ocean", "dark mode", "a rainy city", "our dog", "pizza", "the night sky"],
    "thing2": ["the sky on a clear day", "grass", "a banana", "snow"],
    "topic": ["remote work", "carbon taxes", "open-source funding", "nuclear power", "school uniforms", "urban housing"],
    "place": ["a 1920s ocean liner", "a remote Antarctic research station", "a Venetian glass workshop"],
    "doc": ["merger agreement", "clinical study report", "annual report", "regulatory filing", "research paper"],
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Italy", "Egypt", "Peru"],
    "book": ["Hamlet", "1984", "Don Quixote", "The Hobbit"],
    "animal": ["spider", "dog", "bird", "horse", "cat"],
    "month": ["February", "April", "December"],
    "event": ["the Industrial Revolution", "the fall of the Western Roman Empire", "the 2008 financial crisis", "the Green Revolution"],
    "mech": ["a transformer's attention mechanism", "CRISPR gene editing", "general relativity's gravitational redshift", "the Black-Scholes model"],
    "a_sys": ["Raft", "Spanner", "Cassandra"], "b_sys": ["Paxos", "CockroachDB", "DynamoDB"],
    "phrase": ["good morning", "thanks a lot", "where is the bathroom", "I love you", "how much is this", "see you tomorrow"],
    "tlang": ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Chinese", "Korean"],
    "genre": ["legal contract", "poem", "technical manual", "satirical newspaper column"],
    "review": ["I loved it.", "Terrible service.", "Best purchase ever!", "It broke after a day.", "Pretty good overall."],
    "spam": ["You won a free iPhone, click now!", "Hi, lunch tomorrow?", "Cheap meds, no prescription!"],
    "foreign": ["Bonjour tout le monde", "Wie geht es dir?", "¿Dónde está la biblioteca?"],
    "headline": ["Local team wins the cup final", "Parliament passes the new budget", "Star striker signs new contract"],
    "contact": ["write to sam@example.org any time", "call me on 555-0142", "reach Ana at ana.lopez@mail.com"],
    "date": ["May 4th", "12 March 2025", "the 1st of June"],
    "person": ["Maria", "John", "Dr. Chen"],
    "order": ["#48213", "A-9912", "ORD-5521"],
    "sys": ["our MySQL monolith", "the billing service", "our on-prem Hadoop cluster", "the authentication system"],
    "target": ["managed PostgreSQL", "Kubernetes", "a cloud data warehouse", "an event-driven architecture"],
    "n_teams": ["four", "eight", "twelve"],
    "slot": ["morning", "afternoon", "evening"],
    "day": ["Monday", "Saturday", "Sunday", "Friday"],
    "clues": ["A: B did it. B: C is lying. C: I was home. D: A is telling the truth.", "2, 3, 3, 1, 2"],
}


def fill(template, i):
    """Fills `template`'s slots from the parts, picking by index `i`."""
    out = template
    nums = {"a": 12 + (i * 37) % 900, "b": 7 + (i * 53) % 500, "c": 3 + i % 17, "d": 2 + i % 5, "n": 11 + (i * 7) % 90,
            "p": [10, 15, 20, 25, 50][i % 5], "sq": [16, 25, 49, 64, 81, 144][i % 6],
            "pp": ["0.6", "0.55", "2/3", "0.7"][i % 4]}
    nums["dp"] = nums["d"] + 1
    for k, v in nums.items():
        out = out.replace("{" + k + "}", str(v))
    for k, vals in FILL.items():
        out = out.replace("{" + k + "}", vals[(i * 7 + len(k)) % len(vals)])
    return out


def grid(templates, per, slots=None):
    """`per` requests from `templates`, each with its own parts."""
    rows = []
    for i in range(per):
        t = templates[i % len(templates)]
        if slots:
            for k, vals in slots.items():
                t = t.replace("{" + k + "}", vals[(i * 5 + i // len(templates)) % len(vals)])
        rows.append(fill(t, i))
    return rows


def build():
    """(kind, prompt, hard) rows."""
    out = []
    code_easy = grid(CODE_EASY, 48, {"op": CODE_EASY_OPS, "lang": LANGS})
    code_hard = grid(CODE_HARD, 36, {"task": CODE_HARD_TASKS, "lang": LANGS}) + grid(CODE_HARD_DEBUG, 12, {"lang": LANGS})
    kinds = [
        ("code", code_easy, code_hard),
        ("math", grid(MATH_EASY, 42), grid(MATH_HARD, 40)),
        ("reasoning", grid(REASONING_EASY, 33), grid(REASONING_HARD, 32)),
        ("planning", grid(PLANNING_EASY, 30), grid(PLANNING_HARD, 30)),
        ("writing", grid(WRITING_EASY, 30), grid(WRITING_HARD, 30)),
        ("summarize", grid(SUMMARIZE_EASY, 25, {"short": SHORT}), grid(SUMMARIZE_HARD, 16)),
        ("extraction", grid(EXTRACTION_EASY, 24), grid(EXTRACTION_HARD, 16)),
        ("classification", grid(CLASSIFICATION_EASY, 24), grid(CLASSIFICATION_HARD, 16)),
        ("qa", grid(QA_EASY, 30), grid(QA_HARD, 24)),
        ("translation", grid(TRANSLATION_EASY, 30), grid(TRANSLATION_HARD, 20)),
        ("chat", grid(CHAT_EASY, 24), grid(CHAT_HARD, 6)),
    ]
    seen = set()
    for kind, easy, hard in kinds:
        for level, prompts in ((0, easy), (1, hard)):
            for p in prompts:
                if p in seen:
                    continue
                seen.add(p)
                out.append((kind, p, level))
    return out


if __name__ == "__main__":
    from collections import Counter

    rows = build()
    print(len(rows), Counter((k, h) for k, _, h in rows))
    for k, p, h in rows[::37]:
        print(k, h, p)
