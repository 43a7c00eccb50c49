"""Write the built-in held-out probe suites, deterministically.

    python probes/_generate.py [--out DIR]

Every suite is written from this file alone: checkable items (arithmetic,
counting, dates, units, string formats, Python values) are generated from code
with a fixed seed per suite, hand-written facts are literal lists below. The
output is byte-identical on every run (no set iteration, no clock, no hashing),
and tests/test_builtin_suites.py checks that the checked-in files match it.

Scoring convention: the scored text is prompt + " " + answer when the prompt
does not end in whitespace, so prompts end in e.g. "A:" with no trailing space
and answers/choices carry no leading space. A prompt that ends in a newline
(the Python REPL items) is followed directly by the answer.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import random
from pathlib import Path

VERSION = "1.1"
HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# Hand-written facts (well-known, unambiguous)
# ---------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("the United Kingdom", "London"), ("Ireland", "Dublin"),
    ("Belgium", "Brussels"), ("Austria", "Vienna"), ("Greece", "Athens"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Iceland", "Reykjavik"), ("Poland", "Warsaw"),
    ("the Czech Republic", "Prague"), ("Hungary", "Budapest"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Russia", "Moscow"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("the Philippines", "Manila"),
    ("India", "New Delhi"), ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Canada", "Ottawa"), ("the United States", "Washington, D.C."),
    ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Jamaica", "Kingston"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Venezuela", "Caracas"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
]

ELEMENTS = [
    ("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("carbon", "C"),
    ("nitrogen", "N"), ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"),
    ("sodium", "Na"), ("magnesium", "Mg"), ("silicon", "Si"), ("phosphorus", "P"),
    ("sulfur", "S"), ("chlorine", "Cl"), ("argon", "Ar"), ("potassium", "K"),
    ("calcium", "Ca"), ("iron", "Fe"), ("nickel", "Ni"), ("copper", "Cu"),
    ("zinc", "Zn"), ("silver", "Ag"), ("tin", "Sn"), ("iodine", "I"),
    ("platinum", "Pt"), ("gold", "Au"), ("mercury", "Hg"), ("lead", "Pb"),
    ("uranium", "U"),
]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
PLANET_FACTS = [
    ("Which planet is known as the Red Planet?", "Mars"),
    ("Which is the largest planet in the Solar System?", "Jupiter"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet is farthest from the Sun?", "Neptune"),
    ("Which planet is famous for its large, bright rings?", "Saturn"),
    ("Which planet do humans live on?", "Earth"),
    ("Which is the hottest planet in the Solar System?", "Venus"),
    ("Which is the smallest planet in the Solar System?", "Mercury"),
]

BOOKS = [
    ("Romeo and Juliet", "William Shakespeare"), ("Hamlet", "William Shakespeare"),
    ("Macbeth", "William Shakespeare"), ("Pride and Prejudice", "Jane Austen"),
    ("Sense and Sensibility", "Jane Austen"), ("Nineteen Eighty-Four", "George Orwell"),
    ("Animal Farm", "George Orwell"), ("War and Peace", "Leo Tolstoy"),
    ("Anna Karenina", "Leo Tolstoy"), ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("Don Quixote", "Miguel de Cervantes"), ("Oliver Twist", "Charles Dickens"),
    ("A Christmas Carol", "Charles Dickens"), ("Great Expectations", "Charles Dickens"),
    ("The Adventures of Tom Sawyer", "Mark Twain"),
    ("Adventures of Huckleberry Finn", "Mark Twain"), ("Moby-Dick", "Herman Melville"),
    ("The Hobbit", "J. R. R. Tolkien"), ("The Lord of the Rings", "J. R. R. Tolkien"),
    ("Harry Potter and the Philosopher's Stone", "J. K. Rowling"),
    ("Frankenstein", "Mary Shelley"), ("Dracula", "Bram Stoker"),
    ("The Great Gatsby", "F. Scott Fitzgerald"), ("Les Misérables", "Victor Hugo"),
    ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("The Old Man and the Sea", "Ernest Hemingway"), ("To Kill a Mockingbird", "Harper Lee"),
    ("Jane Eyre", "Charlotte Brontë"), ("Wuthering Heights", "Emily Brontë"),
    ("The Odyssey", "Homer"), ("The Iliad", "Homer"), ("The Divine Comedy", "Dante Alighieri"),
    ("Ulysses", "James Joyce"), ("The Raven", "Edgar Allan Poe"),
    ("The Adventures of Sherlock Holmes", "Arthur Conan Doyle"),
    ("Robinson Crusoe", "Daniel Defoe"), ("Gulliver's Travels", "Jonathan Swift"),
    ("Treasure Island", "Robert Louis Stevenson"), ("The Jungle Book", "Rudyard Kipling"),
    ("The Little Prince", "Antoine de Saint-Exupéry"),
    ("Faust", "Johann Wolfgang von Goethe"),
]

ANIMAL_CLASSES = ["mammal", "bird", "fish", "reptile", "amphibian", "insect"]
ANIMALS = [
    ("whale", "mammal"), ("dolphin", "mammal"), ("bat", "mammal"), ("dog", "mammal"),
    ("horse", "mammal"), ("elephant", "mammal"), ("cow", "mammal"), ("lion", "mammal"),
    ("tiger", "mammal"), ("kangaroo", "mammal"), ("rabbit", "mammal"),
    ("eagle", "bird"), ("penguin", "bird"), ("ostrich", "bird"), ("owl", "bird"),
    ("parrot", "bird"), ("sparrow", "bird"), ("duck", "bird"), ("chicken", "bird"),
    ("shark", "fish"), ("salmon", "fish"), ("trout", "fish"), ("tuna", "fish"),
    ("goldfish", "fish"),
    ("snake", "reptile"), ("crocodile", "reptile"), ("lizard", "reptile"),
    ("turtle", "reptile"), ("tortoise", "reptile"),
    ("frog", "amphibian"), ("toad", "amphibian"), ("salamander", "amphibian"),
    ("newt", "amphibian"),
    ("ant", "insect"), ("bee", "insect"), ("butterfly", "insect"), ("beetle", "insect"),
    ("mosquito", "insect"), ("grasshopper", "insect"), ("ladybug", "insect"),
]

CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America"]
COUNTRY_CONTINENT = [
    ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"), ("Morocco", "Africa"),
    ("Brazil", "South America"), ("Argentina", "South America"), ("Peru", "South America"),
    ("Chile", "South America"), ("Japan", "Asia"), ("India", "Asia"), ("China", "Asia"),
    ("Vietnam", "Asia"), ("Thailand", "Asia"), ("France", "Europe"), ("Germany", "Europe"),
    ("Italy", "Europe"), ("Norway", "Europe"), ("Poland", "Europe"),
    ("Canada", "North America"), ("Mexico", "North America"),
    ("the United States", "North America"),
]

CURRENCIES = [
    ("Japan", "yen"), ("the United Kingdom", "pound"), ("the United States", "dollar"),
    ("India", "rupee"), ("China", "yuan"), ("Russia", "ruble"), ("Mexico", "peso"),
    ("South Korea", "won"), ("Switzerland", "franc"), ("Germany", "euro"),
    ("France", "euro"), ("Italy", "euro"), ("Spain", "euro"), ("Canada", "dollar"),
    ("Australia", "dollar"), ("Brazil", "real"), ("Sweden", "krona"), ("Turkey", "lira"),
]

LANGUAGES = [
    ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Japan", "Japanese"),
    ("Brazil", "Portuguese"), ("Portugal", "Portuguese"), ("Mexico", "Spanish"),
    ("Russia", "Russian"), ("Greece", "Greek"), ("Poland", "Polish"), ("Sweden", "Swedish"),
    ("Turkey", "Turkish"), ("the Netherlands", "Dutch"), ("Egypt", "Arabic"),
]

# (question, answer, distractors)
GENERAL_FACTS = [
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", ["Pablo Picasso", "Vincent van Gogh", "Claude Monet"]),
    ("Who painted The Starry Night?", "Vincent van Gogh", ["Pablo Picasso", "Leonardo da Vinci", "Claude Monet"]),
    ("Who developed the theory of relativity?", "Albert Einstein", ["Isaac Newton", "Charles Darwin", "Galileo Galilei"]),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin", ["Albert Einstein", "Isaac Newton", "Marie Curie"]),
    ("Who formulated the laws of motion and universal gravitation?", "Isaac Newton", ["Albert Einstein", "Charles Darwin", "Nikola Tesla"]),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong", ["Yuri Gagarin", "Buzz Aldrin", "John Glenn"]),
    ("Who was the first person to travel into space?", "Yuri Gagarin", ["Neil Armstrong", "Alan Shepard", "John Glenn"]),
    ("Who was the first President of the United States?", "George Washington", ["Abraham Lincoln", "Thomas Jefferson", "John Adams"]),
    ("Which composer wrote the opera The Magic Flute?", "Wolfgang Amadeus Mozart", ["Ludwig van Beethoven", "Johann Sebastian Bach", "Frédéric Chopin"]),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"]),
    ("What is the tallest mountain on Earth above sea level?", "Mount Everest", ["K2", "Mount Kilimanjaro", "Mont Blanc"]),
    ("In which country are the pyramids of Giza?", "Egypt", ["Mexico", "Peru", "Greece"]),
    ("In which city is the Eiffel Tower?", "Paris", ["London", "Rome", "Berlin"]),
    ("In which city is the Colosseum?", "Rome", ["Athens", "Paris", "Madrid"]),
    ("Which gas do plants take in from the air for photosynthesis?", "carbon dioxide", ["oxygen", "nitrogen", "helium"]),
    ("What is the largest mammal?", "the blue whale", ["the elephant", "the giraffe", "the hippopotamus"]),
    ("What is the hardest natural substance?", "diamond", ["gold", "iron", "glass"]),
    ("What is H2O commonly called?", "water", ["salt", "sugar", "oil"]),
    ("At how many degrees Celsius does water freeze?", "0", ["100", "32", "50"]),
    ("At how many degrees Celsius does water boil at sea level?", "100", ["0", "50", "212"]),
    ("What is the star at the center of our Solar System?", "the Sun", ["Sirius", "Polaris", "Betelgeuse"]),
    ("What is the name of Earth's natural satellite?", "the Moon", ["Phobos", "Titan", "Europa"]),
]

COMMONSENSE = {  # category -> (question, answer, distractors)
    "opposite": [
        ("What is the opposite of hot?", "cold", ["big", "fast"]),
        ("What is the opposite of big?", "small", ["red", "loud"]),
        ("What is the opposite of up?", "down", ["near", "left"]),
        ("What is the opposite of day?", "night", ["noon", "week"]),
        ("What is the opposite of fast?", "slow", ["loud", "tall"]),
        ("What is the opposite of happy?", "sad", ["glad", "tall"]),
        ("What is the opposite of open?", "closed", ["empty", "loud"]),
        ("What is the opposite of wet?", "dry", ["cold", "soft"]),
        ("What is the opposite of full?", "empty", ["heavy", "round"]),
        ("What is the opposite of early?", "late", ["soon", "bright"]),
        ("What is the opposite of loud?", "quiet", ["fast", "bright"]),
        ("What is the opposite of rich?", "poor", ["tall", "happy"]),
        ("What is the opposite of win?", "lose", ["play", "run"]),
        ("What is the opposite of push?", "pull", ["kick", "lift"]),
        ("What is the opposite of buy?", "sell", ["pay", "shop"]),
        ("What is the opposite of inside?", "outside", ["under", "behind"]),
        ("What is the opposite of left?", "right", ["up", "under"]),
        ("What is the opposite of true?", "false", ["real", "sure"]),
        ("What is the opposite of above?", "below", ["over", "beside"]),
        ("What is the opposite of thick?", "thin", ["heavy", "wide"]),
        ("What is the opposite of strong?", "weak", ["tall", "brave"]),
        ("What is the opposite of clean?", "dirty", ["wet", "new"]),
        ("What is the opposite of alive?", "dead", ["awake", "young"]),
        ("What is the opposite of summer?", "winter", ["spring", "rain"]),
        ("What is the opposite of black?", "white", ["dark", "brown"]),
        ("What is the opposite of north?", "south", ["east", "west"]),
        ("What is the opposite of tall?", "short", ["big", "thin"]),
        ("What is the opposite of heavy?", "light", ["hard", "big"]),
        ("What is the opposite of come?", "go", ["run", "sit"]),
        ("What is the opposite of question?", "answer", ["word", "letter"]),
    ],
    "uses": [
        ("What do you use to cut paper?", "scissors", ["a spoon", "a pillow"]),
        ("What do you use to write on paper?", "a pen", ["a fork", "a sock"]),
        ("What do you use to eat soup?", "a spoon", ["a knife", "a comb"]),
        ("What do you use to brush your teeth?", "a toothbrush", ["a hairbrush", "a towel"]),
        ("What do you use to dry yourself after a shower?", "a towel", ["a plate", "a lamp"]),
        ("What do you use to unlock a door?", "a key", ["a coin", "a cup"]),
        ("What do you use to see in the dark?", "a flashlight", ["a mirror", "a blanket"]),
        ("What do you use to tell the time?", "a clock", ["a map", "a ruler"]),
        ("What do you use to measure length?", "a ruler", ["a clock", "a spoon"]),
        ("What do you use to find your way in a new city?", "a map", ["a hammer", "a pillow"]),
        ("What do you use to hit a nail?", "a hammer", ["a saw", "a brush"]),
        ("What do you use to take a photo?", "a camera", ["a radio", "an oven"]),
        ("What do you use to call a friend who is far away?", "a phone", ["a book", "a chair"]),
        ("What do you use to stay dry in the rain?", "an umbrella", ["sunglasses", "a fan"]),
        ("What do you use to keep food cold?", "a fridge", ["an oven", "a toaster"]),
        ("What do you use to bake bread?", "an oven", ["a fridge", "a sink"]),
        ("What do you use to sweep the floor?", "a broom", ["a fork", "a pillow"]),
        ("What do you use with water to wash your hands?", "soap", ["glue", "paint"]),
        ("What do you sit on at a dinner table?", "a chair", ["a shelf", "a lamp"]),
        ("What do you sleep in at night?", "a bed", ["a desk", "a stove"]),
        ("What do you carry your books to school in?", "a backpack", ["a pan", "a kettle"]),
        ("What do you use to boil water for tea?", "a kettle", ["a fridge", "a lamp"]),
        ("What do you wear on your feet?", "shoes", ["gloves", "a hat"]),
        ("What do you wear on your hands when it is cold?", "gloves", ["socks", "a belt"]),
        ("What do you wear on your head to keep the sun off?", "a hat", ["shoes", "gloves"]),
        ("What do some people wear on their faces to see better?", "glasses", ["gloves", "boots"]),
    ],
    "places": [
        ("Where do fish live?", "in water", ["in trees", "in the desert"]),
        ("Where do most birds build their nests?", "in trees", ["under water", "in ovens"]),
        ("Where do you buy fresh bread?", "at a bakery", ["at a zoo", "at a bank"]),
        ("Where do you borrow books?", "at a library", ["at a garage", "at a gym"]),
        ("Where do very sick people go to be treated?", "to a hospital", ["to a cinema", "to a stadium"]),
        ("Where do planes take off?", "at an airport", ["at a farm", "at a library"]),
        ("Where do trains stop to pick up passengers?", "at a station", ["at a museum", "at a beach"]),
        ("Where do children go to learn to read?", "to school", ["to the dentist", "to the zoo"]),
        ("Where do people keep money safe?", "in a bank", ["in a garden", "in a river"]),
        ("Where do you watch a film on a big screen?", "at a cinema", ["at a bakery", "at a farm"]),
        ("Where do cows usually live?", "on a farm", ["in the ocean", "on the moon"]),
        ("Where would you find a lot of sand?", "on a beach", ["in a fridge", "on a cloud"]),
        ("Where do bees make honey?", "in a hive", ["in a shoe", "in a river"]),
        ("Where do people park their car at home?", "in a garage", ["in a kitchen", "in a bathtub"]),
    ],
    "animal_sound": [
        ("What sound does a cow make?", "moo", ["bark", "meow"]),
        ("What sound does a dog make?", "woof", ["moo", "quack"]),
        ("What sound does a cat make?", "meow", ["woof", "oink"]),
        ("What sound does a duck make?", "quack", ["moo", "roar"]),
        ("What sound does a pig make?", "oink", ["quack", "meow"]),
        ("What sound does a sheep make?", "baa", ["woof", "quack"]),
        ("What sound does a lion make?", "roar", ["oink", "baa"]),
        ("What sound does a snake make?", "hiss", ["moo", "woof"]),
        ("What sound does an owl make?", "hoot", ["oink", "moo"]),
        ("What sound does a bee make?", "buzz", ["moo", "woof"]),
    ],
    "body": [
        ("What do you use to see?", "eyes", ["ears", "feet"]),
        ("What do you use to hear?", "ears", ["eyes", "knees"]),
        ("What do you use to smell?", "your nose", ["your elbows", "your ears"]),
        ("What do you use to taste food?", "your tongue", ["your elbow", "your hair"]),
        ("What do you use to walk?", "legs", ["ears", "hair"]),
        ("What do you use to think?", "your brain", ["your stomach", "your knee"]),
        ("Which organ pumps blood around the body?", "the heart", ["the lungs", "the stomach"]),
        ("Which organs do you breathe with?", "the lungs", ["the heart", "the teeth"]),
    ],
    "color": [
        ("What color is grass?", "green", ["purple", "orange"]),
        ("What color is the sky on a clear day?", "blue", ["green", "brown"]),
        ("What color is snow?", "white", ["green", "red"]),
        ("What color is a ripe banana?", "yellow", ["blue", "purple"]),
        ("What color is blood?", "red", ["green", "yellow"]),
        ("What color is coal?", "black", ["white", "yellow"]),
        ("What color is a ripe orange?", "orange", ["blue", "pink"]),
        ("What color is a ripe tomato?", "red", ["blue", "white"]),
        ("What color is milk?", "white", ["green", "black"]),
        ("What color is a lemon?", "yellow", ["blue", "black"]),
    ],
    "how_many": [
        ("How many legs does a dog have?", "four", ["two", "six"]),
        ("How many legs does a bird have?", "two", ["four", "eight"]),
        ("How many legs does a spider have?", "eight", ["six", "four"]),
        ("How many legs does an insect have?", "six", ["eight", "four"]),
        ("How many wheels does a bicycle have?", "two", ["four", "six"]),
        ("How many wheels does a normal car have?", "four", ["two", "three"]),
        ("How many eyes does a person have?", "two", ["three", "five"]),
        ("How many noses does a person have?", "one", ["two", "three"]),
    ],
    "cause_effect": [
        ("What happens to ice when it gets warm?", "it melts", ["it freezes", "it burns"]),
        ("What happens to water when it gets very cold?", "it freezes", ["it boils", "it melts"]),
        ("What happens to water when it is heated to 100 degrees Celsius at sea level?", "it boils", ["it freezes", "it melts"]),
        ("What usually happens if you drop a glass on a hard floor?", "it breaks", ["it floats", "it grows"]),
        ("What do plants need to grow?", "water", ["plastic", "noise"]),
        ("What do you do when you are tired?", "sleep", ["run", "shout"]),
        ("What do you do when you are hungry?", "eat", ["swim", "sing"]),
        ("What do you do when you are thirsty?", "drink", ["run", "read"]),
        ("When is it dark outside?", "at night", ["at noon", "in the afternoon"]),
        ("Which is heavier, an elephant or a mouse?", "an elephant", ["a mouse", "they weigh the same"]),
        ("Which is bigger, the Sun or a football?", "the Sun", ["a football", "they are the same size"]),
        ("Which is faster, a car or a snail?", "a car", ["a snail", "they are equally fast"]),
        ("Which is hotter, fire or ice?", "fire", ["ice", "they are equally hot"]),
        ("What falls from clouds when it rains?", "water", ["sand", "leaves"]),
        ("What do bees make?", "honey", ["milk", "silk"]),
        ("What do cows give that people drink?", "milk", ["honey", "juice"]),
        ("What do chickens lay?", "eggs", ["milk", "wool"]),
        ("What do sheep give us?", "wool", ["eggs", "honey"]),
        ("What do you call a baby dog?", "a puppy", ["a kitten", "a calf"]),
        ("What do you call a baby cat?", "a kitten", ["a puppy", "a foal"]),
        ("What do you call a baby cow?", "a calf", ["a chick", "a kitten"]),
        ("Which season comes after winter?", "spring", ["summer", "autumn"]),
        ("Which meal do people eat in the morning?", "breakfast", ["dinner", "lunch"]),
        ("Which meal do people eat in the evening?", "dinner", ["breakfast", "lunch"]),
        ("Where does the sun rise?", "in the east", ["in the west", "in the north"]),
        ("What do you call frozen water?", "ice", ["steam", "sand"]),
        ("What rises from a pot of boiling water?", "steam", ["ice", "snow"]),
        ("Which of these animals is very slow: a cheetah, a snail or a horse?", "a snail", ["a cheetah", "a horse"]),
        ("Which of these animals can fly: a dog, a cow or a bird?", "a bird", ["a dog", "a cow"]),
        ("Which of these animals lives in the sea: a whale, a camel or a horse?", "a whale", ["a camel", "a horse"]),
        ("Which of these is a fruit: a carrot, an apple or a potato?", "an apple", ["a carrot", "a potato"]),
        ("Which of these is a vegetable: an apple, a banana or a carrot?", "a carrot", ["an apple", "a banana"]),
        ("Which of these can you eat: a rock, bread or a shoe?", "bread", ["a rock", "a shoe"]),
        ("Which of these is used for writing: a fork, a shoe or a pencil?", "a pencil", ["a fork", "a shoe"]),
        ("Which of these floats on water: a rock, a wooden stick or an iron nail?", "a wooden stick", ["a rock", "an iron nail"]),
        ("Which of these is soft: a pillow, a brick or a rock?", "a pillow", ["a brick", "a rock"]),
        ("Which of these is sharp: a pillow, a sponge or a knife?", "a knife", ["a pillow", "a sponge"]),
        ("Which of these melts in the hot sun: a rock, ice cream or a spoon?", "ice cream", ["a rock", "a spoon"]),
    ],
}

# English -> (French, Spanish, German)
TRANSLATIONS = [
    ("one", "un", "uno", "eins"), ("two", "deux", "dos", "zwei"),
    ("three", "trois", "tres", "drei"), ("four", "quatre", "cuatro", "vier"),
    ("five", "cinq", "cinco", "fünf"), ("six", "six", "seis", "sechs"),
    ("seven", "sept", "siete", "sieben"), ("eight", "huit", "ocho", "acht"),
    ("nine", "neuf", "nueve", "neun"), ("ten", "dix", "diez", "zehn"),
    ("red", "rouge", "rojo", "rot"), ("blue", "bleu", "azul", "blau"),
    ("green", "vert", "verde", "grün"), ("black", "noir", "negro", "schwarz"),
    ("white", "blanc", "blanco", "weiß"), ("yellow", "jaune", "amarillo", "gelb"),
    ("cat", "chat", "gato", "Katze"), ("dog", "chien", "perro", "Hund"),
    ("horse", "cheval", "caballo", "Pferd"), ("bird", "oiseau", "pájaro", "Vogel"),
    ("fish", "poisson", "pez", "Fisch"), ("cow", "vache", "vaca", "Kuh"),
    ("house", "maison", "casa", "Haus"), ("water", "eau", "agua", "Wasser"),
    ("book", "livre", "libro", "Buch"), ("sun", "soleil", "sol", "Sonne"),
    ("moon", "lune", "luna", "Mond"), ("bread", "pain", "pan", "Brot"),
    ("apple", "pomme", "manzana", "Apfel"), ("milk", "lait", "leche", "Milch"),
    ("school", "école", "escuela", "Schule"), ("day", "jour", "día", "Tag"),
    ("night", "nuit", "noche", "Nacht"), ("tree", "arbre", "árbol", "Baum"),
    ("city", "ville", "ciudad", "Stadt"), ("mother", "mère", "madre", "Mutter"),
    ("father", "père", "padre", "Vater"), ("brother", "frère", "hermano", "Bruder"),
    ("sister", "sœur", "hermana", "Schwester"), ("hello", "bonjour", "hola", "hallo"),
    ("thank you", "merci", "gracias", "danke"), ("yes", "oui", "sí", "ja"),
    ("no", "non", "no", "nein"), ("good", "bon", "bueno", "gut"),
    ("small", "petit", "pequeño", "klein"), ("Monday", "lundi", "lunes", "Montag"),
    ("Sunday", "dimanche", "domingo", "Sonntag"), ("man", "homme", "hombre", "Mann"),
    ("woman", "femme", "mujer", "Frau"), ("child", "enfant", "niño", "Kind"),
    ("table", "table", "mesa", "Tisch"), ("window", "fenêtre", "ventana", "Fenster"),
    ("door", "porte", "puerta", "Tür"), ("cheese", "fromage", "queso", "Käse"),
    ("flower", "fleur", "flor", "Blume"), ("sea", "mer", "mar", "Meer"),
    ("friend", "ami", "amigo", "Freund"),
]
LANGS = ["French", "Spanish", "German"]
LANG_CODES = ["fr", "es", "de"]
# words whose translation back into English is a single, unambiguous word
REVERSE_OK = [
    "one", "two", "three", "four", "five", "seven", "eight", "nine", "ten",
    "red", "blue", "green", "black", "white", "yellow", "cat", "dog", "horse", "bird",
    "fish", "cow", "house", "water", "book", "sun", "moon", "bread", "apple", "milk",
    "tree", "school", "cheese", "flower", "door", "window",
]

PY_QUIZ = [
    ("Which Python keyword defines a function?", "def", ["func", "sub", "proc"]),
    ("Which Python keyword defines a class?", "class", ["struct", "object", "type"]),
    ("Which Python keyword starts a loop over the items of a list?", "for", ["loop", "each", "repeat"]),
    ("Which Python keyword exits a function and gives back a value?", "return", ["exit", "give", "back"]),
    ("Which Python keyword brings in a module?", "import", ["include", "require", "using"]),
    ("Which Python value means 'no value'?", "None", ["null", "nil", "void"]),
    ("Which Python keyword means 'else if'?", "elif", ["elseif", "ifelse", "elsif"]),
    ("Which character starts a comment in Python?", "#", ["//", "--", ";"]),
    ("Which Python keyword makes a small anonymous function?", "lambda", ["fn", "func", "arrow"]),
    ("Which Python function gives the number of items in a list?", "len", ["size", "count", "total"]),
    ("Which Python function shows text on the screen?", "print", ["echo", "show", "write"]),
    ("Which Python keyword handles an exception after try?", "except", ["catch", "rescue", "handle"]),
    ("Which Python keyword stops a loop early?", "break", ["stop", "exit", "halt"]),
    ("Which Python type holds key-value pairs?", "dict", ["list", "tuple", "str"]),
    ("Which Python type holds text?", "str", ["int", "float", "bool"]),
]
PY_IDIOMS = [
    ("import numpy as", "np", ["pd", "plt", "tf"]),
    ("import pandas as", "pd", ["np", "plt", "tf"]),
    ("import matplotlib.pyplot as", "plt", ["np", "pd", "sns"]),
    ('if __name__ ==', '"__main__":', ['"main":', '"__init__":', '"__name__":']),
    ("class Dog:\n    def __init__(self, name):\n        self.name =", "name", ["self", "Dog", "init"]),
    ("for i in", "range(10):", ["range[10]:", "10:", "loop(10):"]),
    ("numbers = [1, 2, 3]\nnumbers.", "append(4)", ["push(4)", "add(4)", "insert4"]),
]

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def qa(question: str) -> str:
    return f"Q: {question}\nA:"


def prefix_free(choices: list[str]) -> bool:
    """No choice is a prefix of another: log-likelihood scoring would favour the shorter."""
    return not any(a != b and b.startswith(a) for a in choices for b in choices)


def choose(rng: random.Random, answer: str, pool: list[str], k: int = 3) -> list[str]:
    """answer plus k distractors from pool (distinct, never the answer, no choice a
    prefix of another), shuffled."""
    others = [x for x in dict.fromkeys(pool) if x != answer and prefix_free([x, answer])]
    while True:
        choices = rng.sample(others, k) + [answer]
        if prefix_free(choices):
            break
    rng.shuffle(choices)
    return choices


class Suite:
    def __init__(self, name: str, prefix: str, description: str):
        self.name, self.prefix, self.description = name, prefix, description
        self.items: list[dict] = []
        self.prompts: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def has(self, prompt: str) -> bool:
        return prompt in self.prompts

    def add(self, kind: str, prompt: str, answer: str, choices: list[str] | None = None, tags: list[str] | None = None) -> None:
        assert prompt not in self.prompts, f"{self.name}: duplicate prompt {prompt!r}"
        assert prompt == prompt.rstrip() or prompt.endswith("\n"), prompt
        assert answer and answer == answer.strip(), answer
        if choices is not None:
            assert answer in choices and len(set(choices)) == len(choices), (answer, choices)
            assert all(c and c == c.strip() for c in choices), choices
            assert prefix_free(choices), choices
        self.counts[kind] = self.counts.get(kind, 0) + 1
        pid = f"{self.prefix}-{kind}-{self.counts[kind]:03d}"
        self.prompts[prompt] = pid
        item: dict = {"id": pid, "prompt": prompt, "answer": answer}
        if choices is not None:
            item["choices"] = choices
        item["task"] = kind
        item["tags"] = ["mc" if choices is not None else "free"] + (tags or [])
        self.items.append(item)

    def write(self, out: Path) -> Path:
        # 3 exemplars when the prompts are plain text (a pretrained base, --chat-template off), none inside
        # a chat turn: measured on SmolLM2-135M-Instruct's world_knowledge (README "Few-shot").
        header = {"_suite": {"name": self.name, "version": VERSION, "description": self.description,
                             "fewshot": 3, "fewshot_chat": 0}}
        lines = [json.dumps(header, ensure_ascii=False)]
        lines += [json.dumps(item, ensure_ascii=False) for item in self.items]
        path = out / f"{self.name}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        return path


# ---------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------


def world_knowledge() -> Suite:
    rng = random.Random(101)
    s = Suite("world_knowledge", "wk", "World knowledge, multiple choice: capitals, chemical symbols, planets, authors, animal classes, continents, currencies, languages, famous facts.")
    capitals = [c for _, c in CAPITALS]
    for country, capital in CAPITALS:
        s.add("capital", qa(f"What is the capital of {country}?"), capital, choose(rng, capital, capitals))
    symbols = [sym for _, sym in ELEMENTS]
    for element, sym in ELEMENTS:
        s.add("element", qa(f"What is the chemical symbol for {element}?"), sym, choose(rng, sym, symbols))
    for i, planet in enumerate(PLANETS):
        s.add("planet", qa(f"Which planet is the {ORDINALS[i]} planet from the Sun?"), planet, choose(rng, planet, PLANETS))
    for question, planet in PLANET_FACTS:
        s.add("planet", qa(question), planet, choose(rng, planet, PLANETS))
    authors = [a for _, a in BOOKS]
    for title, author in BOOKS:
        s.add("author", qa(f'Who wrote "{title}"?'), author, choose(rng, author, authors))
    classes = [article(c) for c in ANIMAL_CLASSES]
    for animal, cls in ANIMALS:
        s.add("animal_class", qa(f"What kind of animal is {article(animal)}?"), article(cls), choose(rng, article(cls), classes))
    for country, continent in COUNTRY_CONTINENT:
        s.add("continent", qa(f"On which continent is {country}?"), continent, choose(rng, continent, CONTINENTS))
    currencies = [c for _, c in CURRENCIES]
    for country, currency in CURRENCIES:
        s.add("currency", qa(f"What is the currency of {country}?"), currency, choose(rng, currency, currencies))
    languages = [lang for _, lang in LANGUAGES]
    for country, lang in LANGUAGES:
        s.add("language", qa(f"What is the main language spoken in {country}?"), lang, choose(rng, lang, languages))
    for question, answer, distractors in GENERAL_FACTS:
        s.add("general", qa(question), answer, choose(rng, answer, distractors))
    return s


def arithmetic() -> Suite:
    rng = random.Random(202)
    s = Suite("arithmetic", "ar", "Arithmetic with whole numbers, free numeric answers: addition, subtraction, multiplication, exact division.")

    def add(kind: str, expr: str, value: int, n: int) -> None:
        prompt = qa(f"What is {expr}?")
        if not s.has(prompt) and s.counts.get(kind, 0) < n:
            s.add(kind, prompt, str(value))

    while s.counts.get("add", 0) < 40:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        add("add", f"{a} + {b}", a + b, 40)
    while s.counts.get("add_large", 0) < 20:
        a, b = rng.randint(100, 999), rng.randint(10, 999)
        add("add_large", f"{a} + {b}", a + b, 20)
    while s.counts.get("add3", 0) < 20:
        a, b, c = rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 30)
        add("add3", f"{a} + {b} + {c}", a + b + c, 20)
    while s.counts.get("sub", 0) < 40:
        a = rng.randint(20, 99)
        b = rng.randint(1, a)
        add("sub", f"{a} - {b}", a - b, 40)
    while s.counts.get("mul", 0) < 30:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        add("mul", f"{a} * {b}", a * b, 30)
    while s.counts.get("mul_large", 0) < 20:
        a, b = rng.randint(11, 40), rng.randint(2, 9)
        add("mul_large", f"{a} * {b}", a * b, 20)
    while s.counts.get("div", 0) < 30:
        b, q = rng.randint(2, 12), rng.randint(2, 12)
        add("div", f"{b * q} / {b}", q, 30)
    while s.counts.get("words", 0) < 30:
        op = rng.choice(["plus", "minus", "times", "divided by"])
        if op == "plus":
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            v = a + b
        elif op == "minus":
            a = rng.randint(5, 60)
            b = rng.randint(1, a)
            v = a - b
        elif op == "times":
            a, b = rng.randint(2, 10), rng.randint(2, 10)
            v = a * b
        else:
            b, v = rng.randint(2, 10), rng.randint(2, 10)
            a = b * v
        add("words", f"{a} {op} {b}", v, 30)
    return s


COUNT_WORDS = [
    "strawberry", "banana", "apple", "mississippi", "balloon", "letter", "coffee",
    "committee", "bookkeeper", "success", "cheese", "butterfly", "elephant", "pepper",
    "tomato", "potato", "rabbit", "puppy", "kitten", "summer", "yellow", "hello",
    "little", "engineer", "necessary", "address", "parallel", "occurrence", "programming",
    "grammar", "pizza", "sheep", "coconut", "giraffe", "umbrella", "cinnamon",
    "difference", "assessment", "referee", "raspberry", "teeth", "window", "garden",
    "river", "computer", "mountain", "banana", "level", "pineapple", "papaya",
]
LIST_WORDS = [
    "apple", "dog", "tree", "car", "book", "cat", "house", "river", "chair", "bird",
    "lamp", "cup", "shoe", "door", "fish", "star", "moon", "hat", "ball", "pen",
]


def counting() -> Suite:
    rng = random.Random(303)
    s = Suite("counting", "ct", "Counting letters, words and repeated items, free numeric answers.")
    words = list(dict.fromkeys(COUNT_WORDS))
    while s.counts.get("letter", 0) < 50:
        word = rng.choice(words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice("bdjkqvwxz")
        prompt = qa(f'How many times does the letter "{letter}" appear in "{word}"?')
        if not s.has(prompt):
            s.add("letter", prompt, str(word.count(letter)))
    for word in rng.sample(words, 35):
        s.add("length", qa(f'How many letters are in the word "{word}"?'), str(len(word)))
    while s.counts.get("list", 0) < 30:
        n = rng.randint(2, 9)
        items = rng.sample(LIST_WORDS, n)
        prompt = qa(f"How many words are in this list: {', '.join(items)}?")
        if not s.has(prompt):
            s.add("list", prompt, str(n))
    while s.counts.get("occurrence", 0) < 30:
        target = rng.choice(LIST_WORDS)
        others = rng.sample([w for w in LIST_WORDS if w != target], 2)
        k = rng.randint(1, 6)
        seq = [target] * k + [rng.choice(others) for _ in range(rng.randint(1, 5))]
        rng.shuffle(seq)
        prompt = qa(f'How many times does the word "{target}" appear in "{" ".join(seq)}"?')
        if not s.has(prompt):
            s.add("occurrence", prompt, str(k))
    while s.counts.get("repeat", 0) < 30:
        word = rng.choice(LIST_WORDS)
        n = rng.randint(1, 9)
        prompt = f"Count the words: {' '.join([word] * n)}.\nAnswer:"
        if not s.has(prompt):
            s.add("repeat", prompt, str(n))
    return s


NAMES = [
    "Anna", "Tom", "Maria", "Ben", "Lucy", "Sam", "Omar", "Nina", "Leo", "Sara", "Paul",
    "Emma", "Jack", "Mia", "Noah", "Lily", "Ali", "Grace", "Hugo", "Zoe", "Ivan", "Rosa",
    "Peter", "Julia", "David", "Kate", "Oscar", "Ella", "Max", "Amy",
]
PET_NAMES = ["Rex", "Luna", "Bella", "Milo", "Coco", "Daisy", "Buddy", "Pepper", "Shadow", "Biscuit", "Ginger", "Rocky"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown"]
OBJECTS = ["ball", "kite", "bike", "hat", "bag", "car", "cup", "book", "scarf", "umbrella"]
PLACES = ["park", "library", "beach", "market", "museum", "zoo", "bank", "cinema", "school", "bakery"]
FOODS = ["apples", "pears", "oranges", "lemons", "bananas", "eggs", "carrots", "potatoes", "onions", "peaches"]
JOBS = ["doctor", "teacher", "farmer", "pilot", "baker", "nurse", "chef", "driver", "painter", "lawyer", "dentist", "singer"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def reading_comprehension() -> Suite:
    rng = random.Random(404)
    s = Suite("reading_comprehension", "rc", "Reading comprehension: a short passage and a question about it, free and multiple-choice answers.")
    N = 22

    def rc(passage: str, question: str) -> str:
        return f"Passage: {passage}\nQuestion: {question}\nAnswer:"

    while s.counts.get("color", 0) < N:
        n1, n2 = rng.sample(NAMES, 2)
        c1, c2, c3 = rng.sample(COLORS, 3)
        o1, o2 = rng.sample(OBJECTS, 2)
        who, obj, col = (n1, o1, c1) if rng.random() < 0.5 else (n2, o2, c2)
        p = rc(f"{n1} has a {c1} {o1}, and {n2} has a {c2} {o2}.", f"What color is {who}'s {obj}?")
        if not s.has(p):
            s.add("color", p, col, [c1, c2, c3] if s.counts.get("color", 0) % 2 else None)
    while s.counts.get("place", 0) < N:
        n = rng.choice(NAMES)
        d = rng.randint(0, 5)
        p1, p2, p3 = rng.sample(PLACES, 3)
        ask_first = rng.random() < 0.5
        p = rc(f"On {DAYS[d]}, {n} went to the {p1}. On {DAYS[d + 1]}, {n} went to the {p2}.",
               f"Where did {n} go on {DAYS[d] if ask_first else DAYS[d + 1]}?")
        ans = f"the {p1 if ask_first else p2}"
        choices = [f"the {x}" for x in (p1, p2, p3)]
        rng.shuffle(choices)
        if not s.has(p):
            s.add("place", p, ans, choices)
    while s.counts.get("count", 0) < N:
        n = rng.choice(NAMES)
        f1, f2 = rng.sample(FOODS, 2)
        k1, k2 = rng.sample(range(2, 10), 2)
        ask_first = rng.random() < 0.5
        p = rc(f"{n} bought {k1} {f1} and {k2} {f2} at the market.", f"How many {f1 if ask_first else f2} did {n} buy?")
        if not s.has(p):
            s.add("count", p, str(k1 if ask_first else k2))
    while s.counts.get("giver", 0) < N:
        n1, n2, n3 = rng.sample(NAMES, 3)
        o = rng.choice(OBJECTS)
        receiver = rng.random() < 0.5
        q = f"Who received the {o}?" if receiver else f"Who gave the {o} to {n2}?"
        p = rc(f"{n1} gave {article(o)} to {n2}.", q)
        choices = [n1, n2, n3]
        rng.shuffle(choices)
        if not s.has(p):
            s.add("giver", p, n2 if receiver else n1, choices if s.counts.get("giver", 0) % 2 == 0 else None)
    while s.counts.get("pet", 0) < N:
        n = rng.choice(NAMES)
        dog, cat, other = rng.sample(PET_NAMES, 3)
        ask_cat = rng.random() < 0.5
        p = rc(f"{n} has a dog named {dog} and a cat named {cat}.", f"What is the name of {n}'s {'cat' if ask_cat else 'dog'}?")
        choices = [dog, cat, other]
        rng.shuffle(choices)
        if not s.has(p):
            s.add("pet", p, cat if ask_cat else dog, choices if s.counts.get("pet", 0) % 2 else None)
    while s.counts.get("age", 0) < N:
        n1, n2 = rng.sample(NAMES, 2)
        a1, a2 = rng.sample(range(5, 40), 2)
        older = rng.random() < 0.5
        p = rc(f"{n1} is {a1} years old. {n2} is {a2} years old.", "Who is older?" if older else "Who is younger?")
        ans = n1 if (a1 > a2) == older else n2
        if not s.has(p):
            s.add("age", p, ans, [n1, n2])
    while s.counts.get("job", 0) < N:
        n1, n2 = rng.sample(NAMES, 2)
        j1, j2, j3 = rng.sample(JOBS, 3)
        ask_first = rng.random() < 0.5
        p = rc(f"{n1} works as a {j1}, and {n2} works as a {j2}.", f"What is {n1 if ask_first else n2}'s job?")
        choices = [j1, j2, j3]
        rng.shuffle(choices)
        if not s.has(p):
            s.add("job", p, j1 if ask_first else j2, choices if s.counts.get("job", 0) % 2 == 0 else None)
    return s


NONSENSE = ["blickets", "wugs", "daxes", "feps", "zorbs", "glims", "toves", "snarks", "quoks", "mimbles"]
START_WORDS = [
    "apple", "banana", "cherry", "dog", "egg", "fish", "garden", "house", "island", "jacket",
    "kite", "lemon", "mountain", "nose", "orange", "pencil", "queen", "river", "snake", "table",
    "umbrella", "violin", "window", "yellow", "zebra",
]


def yes_no() -> Suite:
    rng = random.Random(505)
    s = Suite("yes_no", "yn", "Yes/no questions scored as a two-way choice: comparisons, parity, sums, spelling, capitals, animal classes, syllogisms.")
    YN = ["yes", "no"]

    def add(kind: str, question: str, truth: bool) -> None:
        s.add(kind, qa(question), "yes" if truth else "no", list(YN))

    def balanced(kind: str, n: int, make) -> None:
        want = True
        while s.counts.get(kind, 0) < n:
            question, truth = make(want)
            if truth == want and not s.has(qa(question)):
                add(kind, question, truth)
                want = not want

    def compare(_want):
        a, b = rng.sample(range(1, 100), 2)
        if rng.random() < 0.5:
            return f"Is {a} greater than {b}?", a > b
        return f"Is {a} less than {b}?", a < b

    def parity(_want):
        n = rng.randint(1, 99)
        if rng.random() < 0.5:
            return f"Is {n} an even number?", n % 2 == 0
        return f"Is {n} an odd number?", n % 2 == 1

    def sums(want):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = a + b if want else a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        return f"Is {a} + {b} equal to {c}?", a + b == c

    def starts(_want):
        w = rng.choice(START_WORDS)
        letter = w[0] if rng.random() < 0.5 else rng.choice("abcdefghijklmnoprstuvwyz")
        return f'Does the word "{w}" start with the letter "{letter}"?', w[0] == letter

    def capital(want):
        country, cap = rng.choice(CAPITALS)
        if not want:
            cap = rng.choice([c for k, c in CAPITALS if k != country])
        return f"Is {cap} the capital of {country}?", dict(CAPITALS)[country] == cap

    def animal(want):
        a, cls = rng.choice(ANIMALS)
        if not want:
            cls = rng.choice([c for c in ANIMAL_CLASSES if c != dict(ANIMALS)[a]])
        return f"Is {article(a)} {article(cls)}?", dict(ANIMALS)[a] == cls

    def syllogism(want):
        x, y = rng.sample(NONSENSE, 2)
        name = rng.choice(NAMES)
        if want:
            return f"All {x} are {y}. {name} is one of the {x}. Is {name} one of the {y}?", True
        return f"No {x} are {y}. {name} is one of the {x}. Is {name} one of the {y}?", False

    balanced("compare", 30, compare)
    balanced("parity", 24, parity)
    balanced("sum", 24, sums)
    balanced("starts_with", 24, starts)
    balanced("capital", 24, capital)
    balanced("animal_class", 24, animal)
    balanced("syllogism", 24, syllogism)
    return s


FORMAT_WORDS = [
    "cat", "dog", "sun", "tree", "house", "river", "apple", "chair", "garden", "water",
    "bread", "music", "happy", "green", "stone", "cloud", "light", "table", "paper", "horse",
    "lemon", "window", "pencil", "school", "friend", "summer", "winter", "forest", "bottle",
    "orange", "planet", "rabbit", "candle", "bridge", "castle", "dragon", "flower", "island",
    "jacket", "kitten", "market", "number", "ocean", "pocket", "rocket", "silver", "tiger",
    "violin", "yellow", "zebra", "moon", "star", "fish", "milk", "book", "road", "hand",
    "ship", "door", "bird",
]
NUMBER_WORDS = {
    0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
    8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen",
    14: "fourteen", 15: "fifteen", 16: "sixteen", 17: "seventeen", 18: "eighteen",
    19: "nineteen", 20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty",
    70: "seventy", 80: "eighty", 90: "ninety", 100: "one hundred",
}


def format_following() -> Suite:
    rng = random.Random(606)
    s = Suite("format_following", "ff", "Following a format instruction on a word or number (case, letters, repetition, brackets, quotes, digits), free and multiple-choice answers.")

    def run(kind: str, n: int, make, words=FORMAT_WORDS) -> None:
        for w in rng.sample(words, n):
            prompt, answer, choices = make(w)
            if choices is not None:
                rng.shuffle(choices)
            s.add(kind, prompt, answer, choices)

    run("uppercase", 25, lambda w: (f"Reply with the word in uppercase: {w}\nAnswer:", w.upper(), [w.upper(), w, w.capitalize()]))
    run("lowercase", 20, lambda w: (f"Reply with the word in lowercase: {w.upper()}\nAnswer:", w, [w, w.upper(), w.capitalize()]))
    run("capitalize", 15, lambda w: (f"Reply with the word with a capital first letter: {w}\nAnswer:", w.capitalize(), [w.capitalize(), w.upper(), w]))
    run("first_letter", 20, lambda w: (f"Reply with only the first letter of the word: {w}\nAnswer:", w[0], None))
    run("last_letter", 15, lambda w: (f"Reply with only the last letter of the word: {w}\nAnswer:", w[-1], None))
    run("repeat", 15, lambda w: (f"Repeat the word twice: {w}\nAnswer:", f"{w} {w}", None))
    short = [w for w in FORMAT_WORDS if len(w) <= 5 and w != w[::-1]]
    run("reverse", 15, lambda w: (f"Write the word backwards: {w}\nAnswer:", w[::-1], None), short)
    run("brackets", 15, lambda w: (f"Put the word in square brackets: {w}\nAnswer:", f"[{w}]", [f"[{w}]", f"({w})", f"{{{w}}}"]))
    run("quotes", 10, lambda w: (f"Put the word in double quotes: {w}\nAnswer:", f'"{w}"', [f'"{w}"', f"'{w}'", w]))
    nums = sorted(NUMBER_WORDS)
    for n in rng.sample(nums, 15):
        s.add("to_digits", f"Write the number as digits: {NUMBER_WORDS[n]}\nAnswer:", str(n))
    for n in rng.sample(nums, 15):
        s.add("to_words", f"Write the number in words: {n}\nAnswer:", NUMBER_WORDS[n])
    return s


PY_OPS = [
    # (function name, operator) ; conflicts are never offered as distractors
    ("add", "+"), ("subtract", "-"), ("multiply", "*"), ("divide", "/"), ("power", "**"),
    ("remainder", "%"), ("floor_divide", "//"), ("is_equal", "=="), ("is_greater", ">"),
    ("is_less", "<"),
]
PY_CONFLICT = {"/": ["//"], "//": ["/"], "*": ["**"], "**": ["*"]}
PY_STRINGS = ["hello", "python", "data", "cat", "apple", "code", "world", "tree"]


def python_completion() -> Suite:
    rng = random.Random(707)
    s = Suite("python_completion", "py", "Python: the value a REPL prints for a short expression (free answer) and code completion and keyword questions (multiple choice).")

    def repl(kind: str, expr: str, value) -> bool:
        prompt = f">>> {expr}\n"
        if s.has(prompt):
            return False
        s.add(kind, prompt, repr(value))
        return True

    def fill(kind: str, n: int, make) -> None:
        made = 0
        while made < n:
            made += repl(kind, *make())

    def lst(k):
        return [rng.randint(0, 20) for _ in range(k)]

    def show(xs):
        return "[" + ", ".join(str(x) for x in xs) + "]"

    def int_op():
        op = rng.choice(["+", "-", "*", "//", "%", "**"])
        if op == "**":
            a, b = rng.randint(2, 5), rng.randint(2, 3)
            return f"{a} ** {b}", a**b
        a, b = rng.randint(12, 50), rng.randint(2, 12)  # a >= b: no negative results
        v = {"+": a + b, "-": a - b, "*": a * b, "//": a // b, "%": a % b}[op]
        return f"{a} {op} {b}", v

    fill("int_expr", 30, int_op)
    fill("len_str", 8, lambda: (lambda w: (f'len("{w}")', len(w)))(rng.choice(PY_STRINGS)))
    fill("upper", 6, lambda: (lambda w: (f'"{w}".upper()', w.upper()))(rng.choice(PY_STRINGS)))
    fill("index", 10, lambda: (lambda w, i: (f'"{w}"[{i}]', w[i]))(rng.choice(PY_STRINGS), rng.choice([0, 1, -1])))
    fill("max", 6, lambda: (lambda xs: (f"max({show(xs)})", max(xs)))(lst(rng.randint(3, 5))))
    fill("min", 6, lambda: (lambda xs: (f"min({show(xs)})", min(xs)))(lst(rng.randint(3, 5))))
    fill("sum", 6, lambda: (lambda xs: (f"sum({show(xs)})", sum(xs)))(lst(rng.randint(2, 4))))
    fill("sorted", 6, lambda: (lambda xs: (f"sorted({show(xs)})", sorted(xs)))(rng.sample(range(10), 3)))
    fill("len_list", 6, lambda: (lambda xs: (f"len({show(xs)})", len(xs)))(lst(rng.randint(1, 7))))
    fill("abs", 5, lambda: (lambda n: (f"abs(-{n})", n))(rng.randint(1, 30)))
    fill("repeat", 5, lambda: (lambda c, n: (f'"{c}" * {n}', c * n))(rng.choice("abxyz"), rng.randint(2, 5)))
    fill("compare", 8, lambda: (lambda a, b: (f"{a} > {b}", a > b))(rng.randint(0, 20), rng.randint(0, 20)))
    fill("range", 3, lambda: (lambda n: (f"list(range({n}))", list(range(n))))(rng.randint(1, 3)))
    fill("int_str", 5, lambda: (lambda n: (f'int("{n}")', n))(rng.randint(10, 99)))

    ops = [op for _, op in PY_OPS]
    for name, op in PY_OPS:
        for x, y in [("a", "b"), ("x", "y"), ("m", "n")]:
            prompt = f"def {name}({x}, {y}):\n    return {x}"
            pool = [o for o in ops if o not in PY_CONFLICT.get(op, [])]
            choices = [f"{o} {y}" for o in choose(rng, op, pool)]
            s.add("function_op", prompt, f"{op} {y}", choices)
    for question, answer, distractors in PY_QUIZ:
        s.add("keyword", qa(question), answer, choose(rng, answer, distractors))
    for prompt, answer, distractors in PY_IDIOMS:
        s.add("idiom", prompt, answer, choose(rng, answer, distractors))
    return s


def multilingual() -> Suite:
    rng = random.Random(808)
    s = Suite("multilingual", "ml", "Simple French, Spanish and German vocabulary: English to the language (multiple choice) and back to English (free answer).")
    for li, lang in enumerate(LANGS):
        column = [row[li + 1] for row in TRANSLATIONS]
        for row in TRANSLATIONS:
            english, word = row[0], row[li + 1]
            s.add(f"to_{LANG_CODES[li]}", qa(f'What is the {lang} word for "{english}"?'), word, choose(rng, word, column), [lang])
    pairs = [(lang, row) for lang_i, lang in enumerate(LANGS) for row in TRANSLATIONS if row[0] in REVERSE_OK]
    for lang, row in rng.sample(pairs, 45):
        word = row[LANGS.index(lang) + 1]
        s.add("to_english", qa(f'What is the English word for the {lang} word "{word}"?'), row[0], None, [lang])
    return s


def commonsense() -> Suite:
    rng = random.Random(909)
    s = Suite("commonsense", "cs", "Everyday commonsense, multiple choice: opposites, what things are for, places, animal sounds, the body, colours, cause and effect.")
    for category, items in COMMONSENSE.items():
        for question, answer, distractors in items:
            s.add(category, qa(question), answer, choose(rng, answer, distractors, k=2))
    return s


UNITS = [
    # (big unit, small unit, factor)
    ("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
    ("weeks", "days", 7), ("liters", "milliliters", 1000), ("feet", "inches", 12),
    ("yards", "feet", 3), ("years", "months", 12), ("centimeters", "millimeters", 10),
]
SINGULAR = {
    "meters": "meter", "kilometers": "kilometer", "kilograms": "kilogram", "hours": "hour",
    "minutes": "minute", "days": "day", "weeks": "week", "liters": "liter", "feet": "foot",
    "yards": "yard", "years": "year", "centimeters": "centimeter", "seconds": "second",
    "grams": "gram", "milliliters": "milliliter", "inches": "inch", "months": "month",
    "millimeters": "millimeter",
}
MONTHS = list(calendar.month_name)[1:]


def fmt_date(d: dt.date) -> str:
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def units_dates() -> Suite:
    rng = random.Random(1010)
    s = Suite("units_dates", "ud", "Unit conversions and calendar questions (days in a month, leap years, weekdays, date arithmetic), free numeric and multiple-choice answers.")

    def qty(n: int, unit: str) -> str:
        return f"{n} {SINGULAR[unit] if n == 1 else unit}"

    while s.counts.get("convert", 0) < 50:
        big, small, f = rng.choice(UNITS)
        n = rng.randint(1, 12)
        p = qa(f"How many {small} are in {qty(n, big)}?")
        if not s.has(p):
            s.add("convert", p, str(n * f))
    while s.counts.get("convert_back", 0) < 20:
        big, small, f = rng.choice(UNITS)
        n = rng.randint(2, 12)
        p = qa(f"How many {big} are in {n * f} {small}?")
        if not s.has(p):
            s.add("convert_back", p, str(n))
    while s.counts.get("month_days", 0) < 20:
        year, month = rng.randint(1990, 2030), rng.randint(1, 12)
        if s.counts.get("month_days", 0) % 3 == 0:
            month = 2
        p = qa(f"How many days are in {MONTHS[month - 1]} {year}?")
        if not s.has(p):
            s.add("month_days", p, str(calendar.monthrange(year, month)[1]))
    want = True
    while s.counts.get("leap_year", 0) < 20:
        year = rng.choice([rng.randint(1890, 2040), 4 * rng.randint(475, 510), rng.choice([1900, 2000, 2100, 1800, 2400])])
        p = qa(f"Is {year} a leap year?")
        if calendar.isleap(year) == want and not s.has(p):
            s.add("leap_year", p, "yes" if want else "no", ["yes", "no"])
            want = not want
    start, span = dt.date(1950, 1, 1).toordinal(), (dt.date(2020, 12, 31) - dt.date(1950, 1, 1)).days
    while s.counts.get("weekday", 0) < 25:
        d = dt.date.fromordinal(start + rng.randint(0, span))
        p = qa(f"What day of the week was {fmt_date(d)}?")
        if not s.has(p):
            wd = DAYS[d.weekday()]
            s.add("weekday", p, wd, choose(rng, wd, DAYS))
    while s.counts.get("month_after", 0) < 15:
        m, k = rng.randint(0, 11), rng.randint(1, 5)
        q = f"Which month comes after {MONTHS[m]}?" if k == 1 else f"Which month comes {k} months after {MONTHS[m]}?"
        if not s.has(qa(q)):
            s.add("month_after", qa(q), MONTHS[(m + k) % 12])
    while s.counts.get("day_after", 0) < 15:
        d, k = rng.randint(0, 6), rng.randint(1, 6)
        q = f"Which day comes after {DAYS[d]}?" if k == 1 else f"Which day of the week is {k} days after {DAYS[d]}?"
        if not s.has(qa(q)):
            s.add("day_after", qa(q), DAYS[(d + k) % 7])
    while s.counts.get("date_add", 0) < 20:
        d = dt.date.fromordinal(start + rng.randint(0, span))
        k = rng.randint(2, 30)
        right = d + dt.timedelta(days=k)
        wrong = [right + dt.timedelta(days=x) for x in rng.sample([-2, -1, 1, 2, 7], 3)]
        choices = [fmt_date(x) for x in wrong + [right]]
        rng.shuffle(choices)
        p = qa(f"What is the date {k} days after {fmt_date(d)}?")
        if not s.has(p):
            s.add("date_add", p, fmt_date(right), choices)
    while s.counts.get("days_between", 0) < 15:
        d = dt.date.fromordinal(start + rng.randint(0, span))
        k = rng.randint(2, 40)
        p = qa(f"How many days after {fmt_date(d)} is {fmt_date(d + dt.timedelta(days=k))}?")
        if not s.has(p):
            s.add("days_between", p, str(k))
    return s


SUITES = [
    world_knowledge, arithmetic, counting, reading_comprehension, yes_no,
    format_following, python_completion, multilingual, commonsense, units_dates,
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the .jsonl files (default: probes/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for make in SUITES:
        suite = make()
        path = suite.write(args.out)
        print(f"{path.name}: {len(suite.items)} items")


if __name__ == "__main__":
    main()
