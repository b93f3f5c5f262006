"""Switchyard's own labelled prompts for the kinds no public source labels
(chat, planning) or labels only under a research-use licence (translation),
plus easy and hard requests of every kind for the difficulty score.

Written for this project and licensed with it (Apache-2.0). Each prompt is
built from hand-written parts; `build()` returns the rows, deterministically.
"""

CHAT = [
    "hi! how's your day going?", "good morning, anything fun planned for the weekend?",
    "I'm bored, tell me something interesting", "thanks, that was really helpful!",
    "what's your favourite colour?", "can we just chat for a bit? long day at work",
    "lol that's hilarious", "do you like music? I've been listening to a lot of jazz lately",
    "I just got a puppy and I'm so excited", "ugh, Mondays. how are you holding up?",
    "tell me a joke about cats", "what should I have for dinner tonight? I can't decide",
    "my friend said something rude and I'm still annoyed", "do you ever get tired of talking?",
    "hello there", "hey, are you still there?", "that's cool, what else can you do?",
    "I finally finished my marathon training!", "I feel a bit lonely today",
    "what do you think about pineapple on pizza?", "haha nice one",
    "I'm nervous about my job interview tomorrow", "can you cheer me up?",
    "what's up?", "ok cool, thanks buddy", "say something nice",
    "I watched a great movie last night, have you heard of it?", "goodnight!",
    "how do you feel about rainy days?", "it's my birthday today :)",
    "yo", "I think I'm going to take a nap", "do you have a name?",
    "I'm so happy it's Friday", "can you be my friend?", "what's the weather like where you are?",
    "sorry for the late reply, been busy", "i love talking to you",
    "my cat just knocked over my coffee", "what are you up to?",
]

PLANNING = [
    "Plan a three-day trip to Lisbon for two people on a mid-range budget, with a day-by-day itinerary.",
    "Draw up a project plan to migrate our PostgreSQL 12 cluster to version 16 with zero downtime, with phases, owners and a rollback path.",
    "Create a 12-week training schedule for a first half marathon, three runs a week.",
    "Help me plan a product launch: milestones from beta to general availability over the next quarter.",
    "Make a weekly meal plan for a family of four, vegetarian, under $120 for groceries.",
    "Outline a roadmap for moving a monolith to microservices over a year, with risks and checkpoints at each stage.",
    "Plan the agenda for a two-day offsite for a 30-person engineering team.",
    "I need a study plan to prepare for the AWS Solutions Architect exam in six weeks.",
    "Schedule the tasks for renovating a kitchen: order, dependencies and how long each takes.",
    "Design a rollout plan for enabling a feature flag to 1%, 10%, 50% and 100% of users with go/no-go criteria.",
    "Plan a birthday party for a seven-year-old at home for twelve kids.",
    "Break down the work to launch an internal developer portal into epics, stories and a timeline.",
    "Give me a step-by-step plan to pay off $15,000 of credit card debt in two years.",
    "Plan the move of our office to a new building over a weekend with minimal disruption.",
    "Create a quarterly OKR plan for a customer support team that wants to cut response times.",
    "Plan a disaster recovery drill for our payment service, including who does what and when.",
    "Lay out a timeline for writing and submitting a grant proposal due in eight weeks.",
    "Plan a sequence of experiments to find why our checkout conversion dropped, in priority order.",
    "Organise a hiring plan for five backend engineers this half: stages, interviewers, and dates.",
    "Propose a phased plan to adopt Kubernetes across six teams, starting with the least risky service.",
    "Plan my day: I have a dentist appointment at 10, a report due at 3 and need to go grocery shopping.",
    "Make a plan for learning Spanish to conversational level in six months, 30 minutes a day.",
    "Plan an incident response runbook for a database outage, from detection to postmortem.",
    "Build a release calendar for a mobile app with two-week sprints and app store review time.",
    "Plan a community garden project from finding land to the first harvest.",
    "Sequence the steps to set up CI/CD for a new repository, with what to do first and what can wait.",
    "Plan a wedding for 80 guests in nine months: what to book when.",
    "Create a migration plan from Jenkins to GitHub Actions for 40 pipelines with no missed releases.",
    "Plan a 5-day road trip through the Scottish Highlands starting in Edinburgh.",
    "Work out a schedule for three people sharing one car for work, school runs and the gym.",
    "Plan the capacity for next year's traffic growth of 3x: what to buy, when, and what to test first.",
    "Plan a data warehouse migration from Redshift to BigQuery in stages, keeping dashboards working.",
    "Plan a weekend cleaning and decluttering routine for a small apartment.",
    "Put together a 90-day onboarding plan for a new engineering manager.",
    "Plan the steps to open a small coffee shop, from business plan to opening day.",
    "Plan a gradual rollout of a new pricing model to existing customers with communication milestones.",
]

TRANSLATION_SENTENCES = [
    ("Where is the nearest train station?", "easy"),
    ("The meeting has been moved to Thursday afternoon.", "easy"),
    ("Thank you very much for your help yesterday.", "easy"),
    ("Please close the window, it is getting cold.", "easy"),
    ("I would like a table for two, please.", "easy"),
    ("Our quarterly revenue grew by twelve percent.", "easy"),
    ("The library opens at nine and closes at six.", "easy"),
    ("Could you send me the invoice by email?", "easy"),
    ("Notwithstanding the foregoing, the licensee shall indemnify the licensor against any claim arising from the licensee's breach of clause 7.2.", "hard"),
    ("The poem's final stanza turns on a pun that only works in the original, so keep the wordplay and the rhyme scheme.", "hard"),
    ("Ambiguity in the source: 'they saw her duck' may mean the bird or the movement; keep it ambiguous in the translation.", "hard"),
]
TRANSLATION_TEMPLATES = [
    "Translate into {lang}: {s}", "How do you say \"{s}\" in {lang}?", "Please translate this to {lang}.\n\n{s}",
    "{s}\n\nTranslate the above into {lang}.", "Can you put this sentence in {lang} for me? {s}",
    "Render the following in {lang}, keeping the tone: {s}",
]
LANGS = ["French", "German", "Spanish", "Japanese", "Italian", "Portuguese", "Dutch", "Korean"]

FOREIGN = [
    "Je voudrais réserver une chambre pour deux nuits.", "Wo ist der Bahnhof?", "¿Cuánto cuesta este libro?",
    "Il treno è in ritardo di dieci minuti.", "Das Wetter ist heute sehr schön.", "Nous avons besoin d'un médecin.",
]
FOREIGN_TEMPLATES = ["Translate to English: {s}", "What does \"{s}\" mean in English?", "{s}\n\nEnglish please."]

# Sentences written for this project in other scripts and languages, with the
# language each is in: a request to translate is one whatever the alphabet of
# its material.
FOREIGN_WIDE = [
    ("Russian", "Завтра утром мы поедем на дачу, если не будет дождя."),
    ("Russian", "Компания объявила о закрытии двух заводов в следующем году."),
    ("Russian", "Мой брат работает врачом в городской больнице уже десять лет."),
    ("Russian", "Правительство обсуждает новый закон о налогах для малого бизнеса."),
    ("Ukrainian", "Сьогодні в місті відкрили нову бібліотеку для дітей."),
    ("Chinese", "我们下周一要开会讨论新产品的价格。"),
    ("Chinese", "这家餐厅的菜很好吃，但是服务太慢了。"),
    ("Chinese", "今年夏天的雨水比往年多很多，很多农田被淹了。"),
    ("Chinese", "请在明天下午五点之前把报告发给我。"),
    ("Japanese", "明日の会議は午後三時に変更になりました。"),
    ("Japanese", "駅までの道を教えていただけますか。"),
    ("Korean", "이번 주말에 친구들과 함께 바다에 갈 거예요."),
    ("Korean", "회의 자료를 내일까지 보내 주세요."),
    ("Czech", "Vláda schválila nový rozpočet na příští rok."),
    ("Czech", "Náš vlak měl zpoždění skoro hodinu kvůli sněhu."),
    ("Czech", "Hokejisté vyhráli rozhodující zápas až v prodloužení."),
    ("Icelandic", "Veðrið í Reykjavík var mjög slæmt í gær."),
    ("Icelandic", "Ég ætla að heimsækja ömmu mína um helgina."),
    ("Polish", "Jutro rano idę do lekarza, bo boli mnie gardło."),
    ("Polish", "Cena mieszkań w Warszawie znowu wzrosła w tym roku."),
    ("Greek", "Το πλοίο για τη Σαντορίνη φεύγει στις οκτώ το πρωί."),
    ("Turkish", "Yarın akşam yemeğe annemlere gideceğiz."),
    ("Arabic", "سيبدأ الاجتماع في الساعة العاشرة صباحا."),
    ("Hindi", "मुझे कल सुबह जल्दी दफ्तर जाना है।"),
    ("German", "Die Bundesregierung will den Ausbau der Windkraft deutlich beschleunigen."),
    ("German", "Nach dem Spiel feierten die Fans bis spät in die Nacht auf dem Marktplatz."),
    ("Portuguese", "O novo hospital vai abrir as portas no próximo mês."),
    ("Dutch", "De trein naar Amsterdam vertrekt over tien minuten."),
    ("Swedish", "Vi ses på fredag efter jobbet vid det vanliga stället."),
    ("Vietnamese", "Tôi muốn đặt một phòng cho hai người vào cuối tuần này."),
]
FOREIGN_WIDE_TEMPLATES = [
    "Translate this {src} text into English:\n\n{s}",
    "{s}\n\nCan you translate that to English?",
    "What does this {src} sentence mean in English? {s}",
    "Please give me an English translation of the following:\n{s}",
    "I got this message in {src}: \"{s}\" What does it say?",
    "{src} to English, please: {s}",
    "{s}\n\nWhat is this in English?",
    "Could you put this {src} into plain English for me?\n\n{s}",
]
# Requests written in other languages that ask for no translation: the
# language of a request is not its kind.
IN_OTHER_LANGUAGES = [
    ("writing", "Напиши короткое стихотворение о зимнем лесе."),
    ("code", "Напиши функцию на Python, которая проверяет, является ли строка палиндромом."),
    ("qa", "Почему небо голубое?"),
    ("math", "Реши уравнение: 3x + 7 = 22."),
    ("writing", "写一封邮件，邀请同事参加周五的团队聚餐。"),
    ("code", "用JavaScript写一个函数，把数组里的重复元素去掉。"),
    ("qa", "长城有多长？"),
    ("summarize", "请用三句话总结下面这篇文章的要点。"),
    ("writing", "Napiš krátký příběh o psovi, který se ztratil ve městě."),
    ("qa", "Jaké je hlavní město Austrálie?"),
    ("writing", "Schreibe eine kurze Geburtstagskarte für meine Kollegin."),
    ("code", "Schreibe ein SQL-Query, das alle Kunden aus Berlin ausgibt."),
    ("planning", "Hilf mir, eine Woche Urlaub in Portugal zu planen."),
    ("qa", "¿Cuál es la diferencia entre un virus y una bacteria?"),
    ("writing", "Escribe un poema corto sobre el mar."),
    ("math", "Calcula el área de un círculo de radio 4 cm."),
    ("writing", "日本の秋について短いエッセイを書いてください。"),
    ("qa", "Hvað eru mörg eldfjöll á Íslandi?"),
    ("classification", "Czy ta opinia jest pozytywna czy negatywna: 'Obsługa była okropna.'"),
    ("chat", "Привет! Как у тебя дела сегодня?"),
]

# Requests to translate written in the requester's own language, about
# material in English or in a third language: the ask, not its script, says
# `translation`.
NATIVE_TRANSLATE = [
    "Переведи на английский: Завтра утром мы уезжаем на дачу и вернёмся в воскресенье.",
    "Переведи, пожалуйста, на русский: The meeting has been moved to Thursday afternoon.",
    "Как перевести на английский фразу «не в своей тарелке»?",
    "Помоги перевести это письмо на немецкий: Спасибо за быстрый ответ, мы согласны с условиями.",
    "Переклади українською: The shop is closed on Sundays and public holidays.",
    "请把这句话翻译成英文：我们下周一开始放假。",
    "帮我翻译成中文：Please keep your ticket until the end of the journey.",
    "这句日语是什么意思？翻译成中文：今日はとても暑いですね。",
    "英語に翻訳してください：明日の会議は十時からです。",
    "Übersetze bitte ins Englische: Der Zug hat heute leider zwanzig Minuten Verspätung.",
    "Kannst du das ins Deutsche übersetzen? We will send the invoice at the end of the month.",
    "Traduce al inglés: Mañana vamos a la playa si no llueve.",
    "¿Cómo se dice en francés «¿dónde está la estación de tren?»?",
    "Traduis en anglais, s'il te plaît : Je serai en retard de dix minutes ce matin.",
    "Peux-tu traduire ce texte en espagnol ? The hotel offers free breakfast to all guests.",
    "Přelož do angličtiny: Zítra bude pršet, vezmi si deštník.",
    "Przetłumacz na angielski: Dziękuję za pomoc przy przeprowadzce.",
    "Traduza para o inglês: O restaurante abre às sete da noite.",
    "Traduci in inglese: Il museo è chiuso il lunedì.",
    "İngilizceye çevir: Yarın sabah erkenden yola çıkacağız.",
    "Þýddu á ensku: Ég kem heim seint í kvöld.",
    "Vertaal naar het Engels: De winkel gaat om negen uur open.",
    "Översätt till engelska: Vi har flyttat mötet till nästa vecka.",
    "Μετάφρασε στα αγγλικά: Το πλοίο φεύγει στις οκτώ το πρωί.",
]

# Beside each language above, requests in it that ask for no translation,
# so that the two lists together teach the ask and not the language.
NATIVE_OTHER = [
    ("writing", "Напиши рассказ о мальчике, который нашёл в лесу старый компас."),
    ("writing", "Составь поздравление для коллеги с юбилеем, тёплое и немного смешное."),
    ("code", "Как в Python прочитать CSV-файл и посчитать среднее по столбцу?"),
    ("planning", "Составь план подготовки к марафону на три месяца."),
    ("writing", "Напиши вірш про осінній Київ."),
    ("writing", "写一个关于小猫第一次看到雪的童话故事。"),
    ("qa", "为什么月亮会有阴晴圆缺？"),
    ("writing", "夏休みの思い出について作文を書いてください。"),
    ("writing", "Schreibe eine Geschichte über einen Leuchtturmwärter, der einen Brief findet."),
    ("summarize", "Fasse diesen Artikel in drei Sätzen zusammen: Die Stadt plant neue Radwege und mehr Grünflächen."),
    ("writing", "Escribe un cuento corto sobre un dragón que tiene miedo al fuego."),
    ("qa", "¿Por qué los gatos ronronean?"),
    ("writing", "Écris un poème sur la pluie à Paris."),
    ("code", "Écris une fonction JavaScript qui trie un tableau d'objets par date."),
    ("writing", "Napiš báseň o jarním dešti."),
    ("writing", "Napisz krótkie opowiadanie o kocie, który został kapitanem statku."),
    ("writing", "Escreva uma carta de agradecimento para a minha professora."),
    ("planning", "Aiutami a organizzare un weekend a Firenze con due bambini."),
    ("writing", "Bir yaz akşamı hakkında kısa bir şiir yaz."),
    ("qa", "Hvers vegna er Ísland kallað land elds og ísa?"),
    ("writing", "Schrijf een kort verhaal over een fiets die kan praten."),
    ("writing", "Skriv en kort dikt om midsommar."),
    ("writing", "Γράψε ένα μικρό ποίημα για τη θάλασσα το καλοκαίρι."),
    ("math", "Вычисли площадь прямоугольника со сторонами 12 и 7 сантиметров."),
]

# English material of the kind people send to be translated, and the
# languages they ask for.
ENGLISH_MATERIAL = [
    "The city council voted on Tuesday to close the old bridge to traffic until the repairs are finished.",
    "Shares in the airline fell sharply after it warned that fuel costs would hurt its profits this year.",
    "The striker scored twice in the second half to give his team their first win of the season.",
    "Doctors say the new treatment could help thousands of patients who do not respond to existing drugs.",
    "Heavy snow closed several roads in the north of the country and delayed trains for hours.",
    "The museum will reopen next spring after a two-year renovation of its main hall.",
    "Police are asking anyone who saw the accident on the motorway to come forward.",
    "The company plans to hire two hundred engineers at its new research centre.",
]
TARGET_LANGS = ["Czech", "Icelandic", "Russian", "Chinese", "Polish", "Swedish", "Turkish", "Greek",
                "Ukrainian", "Hindi", "Arabic", "Vietnamese", "Hungarian", "Finnish"]
ENGLISH_MATERIAL_TEMPLATES = [
    "Translate into {lang}:\n{s}",
    "{s}\n\nPlease translate this into {lang}.",
    "Could you translate the following news sentence to {lang}? {s}",
    "How would you write this in {lang}? \"{s}\"",
    "English to {lang}: {s}",
    "I need a {lang} version of this sentence for our website: {s}",
    "{s}\n\n{lang} translation, please.",
]

QA = [
    "Who wrote Pride and Prejudice?", "What year did the Berlin Wall fall?", "How far is the Moon from Earth?",
    "What is the boiling point of water at sea level in Fahrenheit?", "Which planet has the most moons?",
    "What does HTTP stand for?", "Who painted the Mona Lisa?", "How many bones are in the adult human body?",
    "What is the largest ocean on Earth?", "When was the first iPhone released?", "What language is spoken in Brazil?",
    "What is the chemical symbol for gold?", "How long does it take light from the Sun to reach Earth?",
    "What is the population of Canada, roughly?", "Why is the sky blue?", "What causes the seasons on Earth?",
    "How does a vaccine train the immune system?", "What is the difference between a virus and a bacterium?",
    "Who was the first woman to win a Nobel Prize?", "What is the tallest mountain in Africa?",
    "What's the difference between TCP and UDP?", "Is a tomato a fruit or a vegetable?",
    "What is inflation and why do central banks raise interest rates to fight it?",
    "How do noise-cancelling headphones work?", "What is the GDP of Japan?", "Which country has the longest coastline?",
]
CLASSIFY = [
    "Is the sentiment of this tweet positive, negative or neutral? 'Stuck in traffic again, great start to the day.'",
    "Classify this email as spam or not spam: 'You have won a free cruise, click here to claim.'",
    "Label each of these products as electronics, clothing or food: headphones, jeans, apples, laptop.",
    "Which category does this support ticket belong to: billing, bug or feature request? 'I was charged twice.'",
    "Tag the language of this sentence: 'Ich habe keine Zeit.'",
    "Is this review about the food, the service or the price? 'The waiter ignored us for twenty minutes.'",
    "Rate the toxicity of this comment from 0 to 3: 'You clearly have no idea what you are talking about.'",
    "Decide whether this news headline is about sports, politics or technology: 'Chipmaker unveils 2nm process'.",
    "Is this statement a fact or an opinion? 'Paris is the most beautiful city in the world.'",
    "Sort these animals into mammals and birds: eagle, dolphin, penguin, bat, ostrich.",
    "Classify the intent of this message: 'Can I change my delivery address?'",
    "Which of these is a question and which a command? 'Close the door.' 'Is it raining?'",
    "Label the priority of this incident as P1, P2 or P3: the login page is down for all users.",
    "Is this customer message urgent or routine? 'My account was hacked and money is missing.'",
    "Categorise this expense: $42.10 at a petrol station.",
    "Determine if these two sentences mean the same thing: 'He left early.' / 'He departed before the others.'",
]
EXTRACT = [
    "Extract all the dates from this text: The contract starts on 3 March 2024 and ends on 2 March 2025.",
    "Pull out the names of the people mentioned: Maria met Tom and Dr. Okafor at the conference.",
    "List every phone number in this message: call 555-0102 or the office at 555-0199.",
    "From this invoice text, get the total amount and the due date: Total due: $1,240.00, payable by June 30.",
    "Extract the product names and prices from: Widget A $5, Gadget B $12.50, Gizmo C $3.",
    "What city and country does this address belong to? 10 Downing Street, London SW1A 2AA, United Kingdom.",
    "Give me the JSON fields name, email and company from this signature: Jane Roe | jane@acme.io | Acme Corp.",
    "Find the order number in this email: Your order #A-88231 has shipped.",
    "Extract the ingredients from this recipe: mix 2 eggs, 200g flour and a pinch of salt.",
    "Which error code appears in this log line? 2024-05-01 12:00:03 ERROR E1042 disk quota exceeded",
    "Get the flight number and departure time: Your flight BA117 departs at 18:45 from Heathrow.",
    "Extract every URL from this paragraph: see https://example.com and http://docs.example.org/start.",
    "From the meeting notes, list the action items and who owns each one.",
    "Pull the key terms out of this job ad: remote, 5 years Python, salary 90k, start in January.",
]
SUMMARIZE = [
    "Summarize this paragraph in one sentence: The city council voted to expand the bike lane network after a year of public consultations, citing safety data.",
    "Give me a TL;DR of this email thread about moving the release date.",
    "Can you sum up the main points of this article in three bullets?",
    "Condense these meeting notes into a short summary for people who missed it.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Write a brief abstract for this research paper based on the text below.",
    "Shorten this product description to under 50 words.",
    "What are the key takeaways from this earnings call transcript?",
    "Recap yesterday's standup notes in a few lines.",
    "Boil this long customer complaint down to the one thing they want.",
    "Summarize the changes in this pull request description for the release notes.",
    "Give a one-paragraph summary of this chapter.",
]

# Easy and hard requests of one kind each: the difficulty score's own labels.
PAIRS = {
    "code": [
        ("Write a Python function that returns the sum of a list of numbers.",
         "Implement a lock-free multi-producer multi-consumer queue in Rust using atomics, explain the memory orderings you chose and argue why it is linearizable."),
        ("How do I reverse a string in JavaScript?",
         "Our Go service deadlocks under load when two goroutines take the cache and the connection pool locks in different orders; here is the code path. Find the cycle and redesign the locking so it cannot recur."),
        ("What does `git status` do?",
         "Write a parser for a subset of SQL (SELECT with joins, WHERE, GROUP BY) in TypeScript that produces an AST, with error recovery and tests."),
        ("Convert this list to a set in Python: [1, 2, 2, 3]",
         "Design a consistent-hashing sharding layer for a key-value store that supports adding nodes without downtime, and write the rebalancing code."),
    ],
    "math": [
        ("What is 15% of 80?",
         "Prove that there are infinitely many primes congruent to 3 modulo 4, and explain where the argument fails for 1 modulo 4."),
        ("Add 234 and 567.",
         "Find all real solutions of x^4 - 5x^2 + 4 = 0 and then determine for which integers n the polynomial x^4 - n x^2 + 4 factors over the integers."),
        ("Is 17 a prime number?",
         "A fair die is rolled until the running total exceeds 100. What is the expected value of the final total? Derive it, do not just simulate."),
    ],
    "reasoning": [
        ("If it is raining, is the ground usually wet?",
         "Five people sit in a row; Anna is not next to Ben, Carl is two seats left of Dana, and Eve is at an end. List every valid arrangement and show the deduction."),
        ("Which is heavier, a kilo of feathers or a kilo of iron?",
         "Our A/B test shows the treatment raised conversion in every region but lowered it overall. Explain how that can happen and what we should conclude."),
    ],
    "planning": [
        ("Plan my grocery shopping for tomorrow.",
         "Plan a zero-downtime migration of a 4 TB PostgreSQL database to a new cloud region, with replication cut-over, verification steps and rollback at each phase."),
    ],
    "writing": [
        ("Write a short thank-you note to my neighbour for watering my plants.",
         "Write a 1,500-word short story in the style of Raymond Carver about a father and son repairing a boat, with an ambiguous ending and no dialogue tags."),
        ("Write a one-line birthday message for a coworker.",
         "Draft a persuasive op-ed arguing both for and against a four-day work week, then reconcile them into a recommendation for a mid-sized manufacturer."),
    ],
    "summarize": [
        ("Summarize this in one sentence: The meeting was moved to Friday because the room was booked.",
         "Summarize the attached 40-page incident review into an executive brief: root causes, contributing factors, what changed, open risks, and decisions needed, with the evidence for each."),
    ],
    "extraction": [
        ("Extract the email address from: contact me at ana@example.com.",
         "From these 30 contracts, extract every termination clause, its notice period, any auto-renewal terms and the governing law, and flag contradictions between them."),
    ],
    "classification": [
        ("Is this review positive or negative? 'I loved it.'",
         "Classify each of these support tickets into our 14-category taxonomy, explaining borderline cases where a ticket could belong to two categories and which rule decides."),
    ],
    "qa": [
        ("What is the capital of Spain?",
         "Why did the 2008 financial crisis spread from US subprime mortgages to European banks so quickly? Trace the mechanisms, not just the timeline."),
        ("How many days are in a leap year?",
         "What are the trade-offs between Raft and Paxos for a geo-replicated metadata store with frequent leader changes, and which would you choose?"),
    ],
    "translation": [
        ("Translate 'good morning' into Spanish.",
         "Translate this legal indemnity clause into German, keeping the defined terms consistent with the German civil code and noting where no exact equivalent exists."),
    ],
}

CHATTER = [
    "Hi there, I hope your week is going well!", "Thanks so much in advance, you're a lifesaver.",
    "Sorry to bother you again, I know you're busy.", "Hope you had a nice weekend.",
    "I really appreciate your help with this, it means a lot.", "Just a quick one today if that's ok.",
    "Good morning! Coffee in hand and ready to go.", "Thanks again for yesterday, that was great.",
]


def build():
    rows = []
    for i, p in enumerate(CHAT):
        rows.append({"id": f"own/chat/{i}", "source": "own", "kind": "chat", "prompt": p, "hard": 0})
    for i, p in enumerate(PLANNING):
        rows.append({"id": f"own/planning/{i}", "source": "own", "kind": "planning", "prompt": p, "hard": 1 if len(p) > 90 else 0})
    n = 0
    for i, (s, level) in enumerate(TRANSLATION_SENTENCES):
        for j, lang in enumerate(LANGS):
            t = TRANSLATION_TEMPLATES[(i + j) % len(TRANSLATION_TEMPLATES)]
            rows.append({"id": f"own/translation/{n}", "source": "own", "kind": "translation",
                         "prompt": t.format(lang=lang, s=s), "hard": 1 if level == "hard" else 0})
            n += 1
    for i, s in enumerate(FOREIGN):
        for j, t in enumerate(FOREIGN_TEMPLATES):
            rows.append({"id": f"own/translation/{n}", "source": "own", "kind": "translation",
                         "prompt": t.format(s=s), "hard": 0})
            n += 1
    for i, (src, f) in enumerate(FOREIGN_WIDE):
        for j in range(2):
            t = FOREIGN_WIDE_TEMPLATES[(2 * i + j) % len(FOREIGN_WIDE_TEMPLATES)]
            rows.append({"id": f"own/translation/{n}", "source": "own_languages", "kind": "translation",
                         "prompt": t.format(src=src, s=f)})
            n += 1
    for i, (kind, p) in enumerate(IN_OTHER_LANGUAGES):
        rows.append({"id": f"own/languages/{i}", "source": "own_languages", "kind": kind, "prompt": p})
    for i, e in enumerate(ENGLISH_MATERIAL):
        for j in range(3):
            lang = TARGET_LANGS[(3 * i + j) % len(TARGET_LANGS)]
            t = ENGLISH_MATERIAL_TEMPLATES[(3 * i + j) % len(ENGLISH_MATERIAL_TEMPLATES)]
            rows.append({"id": f"own/translation/{n}", "source": "own_languages", "kind": "translation",
                         "prompt": t.format(lang=lang, s=e)})
            n += 1
    for i, p in enumerate(NATIVE_TRANSLATE):
        rows.append({"id": f"own/languages/native/{i}", "source": "own_languages", "kind": "translation",
                     "prompt": p})
    for i, (kind, p) in enumerate(NATIVE_OTHER):
        rows.append({"id": f"own/languages/other/{i}", "source": "own_languages", "kind": kind, "prompt": p})
    for kind, items in (("qa", QA), ("classification", CLASSIFY), ("extraction", EXTRACT), ("summarize", SUMMARIZE)):
        for i, p in enumerate(items):
            rows.append({"id": f"own/{kind}/{i}", "source": "own", "kind": kind, "prompt": p, "hard": 0})
    for kind, pairs in PAIRS.items():
        for i, (easy, hard) in enumerate(pairs):
            rows.append({"id": f"own/pair/{kind}/{i}/easy", "source": "own", "kind": kind, "prompt": easy, "hard": 0})
            rows.append({"id": f"own/pair/{kind}/{i}/hard", "source": "own", "kind": kind, "prompt": hard, "hard": 1})
            # The easy one padded with chatter stays easy.
            pad = " ".join(CHATTER[(i + k) % len(CHATTER)] for k in range(3))
            rows.append({"id": f"own/pair/{kind}/{i}/padded", "source": "own", "kind": kind,
                         "prompt": f"{pad} {easy} {CHATTER[i % len(CHATTER)]}", "hard": 0})
    return rows
