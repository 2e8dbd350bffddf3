"""Build captioner/data/imagenet_concepts.json: each ImageNet-1k class -> the words a caption would use.

The 1,000 classes come in the order of the encoder weights' classifier (timm's
`imagenet_synsets.txt`, read straight out of a timm wheel). For each class, WordNet 3.0 (Debian's
wordnet-base files, read with nltk) gives its lemmas and hypernyms; counts of those words in real
human captions (Flickr30k, COCO, Flickr8k) pick the everyday one:

1. a class under a basic-level category in BASIC_LEVEL (every dog breed, every house cat) says
   that category's word;
2. otherwise the most specific lemma, walking the class's own lemmas and then its hypernyms nearest
   first, that captions use at least MIN_COUNT times (a hypernym only in one of its word's
   MAX_SENSE_RANK most common senses: "game" for a grouse is not the game captions mean); the
   walk stops below GENERIC synsets and MAX_CLIMB levels up; with no such lemma, the class's own
   name;
3. then the nearest broader category word from BROAD ("bird", "fish", "car", ...), so that its
   classes add up to one word.

OVERRIDES replaces the result for classes a person writing alt text would name differently; it
was reviewed class by class. A class that is itself a person (a scuba diver) is marked
`"person": true`.

This is a build script, not a run-time dependency of the package; see scripts/README.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nltk is only needed when the script runs
    from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "captioner" / "data" / "imagenet_concepts.json"
DEFAULT_TIMM_WHEEL = Path("/tmp/timm/timm-1.0.31-py3-none-any.whl")
DEFAULT_WORDNET = Path("/usr/share/wordnet")
DEFAULT_CAPTIONS = [
    ROOT.parent / "shared" / "caption-text" / "flickr30k.tsv",
    ROOT.parent / "shared" / "caption-text" / "coco-val2017.tsv",
    ROOT.parent / "shared" / "flickr8k" / "Flickr8k.token.txt",
]
SYNSETS_IN_WHEEL = "timm/data/_info/imagenet_synsets.txt"
FORMAT_VERSION = 1

# The 45 lexicographer files of WordNet 3.0, numbered 00-44 (lexnames(5WN)); nltk needs this file.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

MIN_COUNT = 3  # captions must use a word this often (singular + plural) for it to count as everyday
MAX_SENSE_RANK = 2  # a hypernym's word must mean it in one of its first senses
MAX_CLIMB = 4  # hypernym levels walked above a class
MAX_WORDS = 3

# Hypernyms too general to name a photo's object: the walk stops below them.
GENERIC = frozenset(
    "entity.n.01 physical_entity.n.01 object.n.01 whole.n.02 artifact.n.01 instrumentality.n.03 "
    "organism.n.01 living_thing.n.01 causal_agent.n.01 matter.n.03 abstraction.n.06 animal.n.01 "
    "vertebrate.n.01 chordate.n.01 invertebrate.n.01 food.n.01 food.n.02 solid.n.01 substance.n.01 "
    "substance.n.07 device.n.01 container.n.01 structure.n.01 covering.n.02 commodity.n.01 equipment.n.01 "
    "implement.n.01 conveyance.n.03 geological_formation.n.01 plant.n.02 vascular_plant.n.01 produce.n.01 "
    "reproductive_structure.n.01 plant_organ.n.01 plant_part.n.01 natural_object.n.01 part.n.02".split()
)

# Basic-level categories whose every ImageNet class a caption simply calls by the category's word.
BASIC_LEVEL = {"dog.n.01": "dog", "domestic_cat.n.01": "cat"}

# Broader caption words added after a class's own word, so that e.g. p(bird) sums all bird classes.
BROAD = {
    "bird.n.01": "bird",
    "fish.n.01": "fish",
    "snake.n.01": "snake",
    "lizard.n.01": "lizard",
    "turtle.n.02": "turtle",
    "insect.n.01": "insect",
    "spider.n.01": "spider",
    "monkey.n.01": "monkey",
    "bear.n.01": "bear",
    "flower.n.01": "flower",
    "vegetable.n.01": "vegetable",
    "edible_fruit.n.01": "fruit",
    "car.n.01": "car",
    "truck.n.01": "truck",
    "bus.n.01": "bus",
    "boat.n.01": "boat",
    "ship.n.01": "ship",
    "building.n.01": "building",
    "shop.n.01": "store",
    "hat.n.01": "hat",
    "shoe.n.01": "shoe",
    "ball.n.01": "ball",
    "musical_instrument.n.01": "instrument",
    "clock.n.01": "clock",
    "chair.n.01": "chair",
    "table.n.02": "table",
    "bridge.n.01": "bridge",
    "bottle.n.01": "bottle",
}

# Reviewed fixes: ImageNet wnid -> caption words (first = main word), with the class name as a comment.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "n01440764": ("fish",),  # tench
    "n01496331": ("ray", "fish"),  # electric ray
    "n01498041": ("stingray", "fish"),  # stingray
    "n01514668": ("rooster", "chicken", "bird"),  # cock
    "n01514859": ("hen", "chicken", "bird"),  # hen
    "n01537544": ("bird",),  # indigo bunting
    "n01560419": ("bird",),  # bulbul
    "n01580077": ("blue jay", "bird"),  # jay
    "n01608432": ("hawk", "bird"),  # kite
    "n01614925": ("eagle", "bird"),  # bald eagle
    "n01616318": ("vulture", "bird"),  # vulture
    "n01629819": ("salamander",),  # European fire salamander
    "n01630670": ("newt", "salamander"),  # common newt
    "n01631663": ("newt", "salamander"),  # eft
    "n01632458": ("salamander",),  # spotted salamander
    "n01632777": ("axolotl", "salamander"),  # axolotl
    "n01675722": ("gecko", "lizard"),  # banded gecko
    "n01694178": ("chameleon", "lizard"),  # African chameleon
    "n01742172": ("snake",),  # boa constrictor
    "n01744401": ("snake",),  # rock python
    "n01748264": ("cobra", "snake"),  # Indian cobra
    "n01755581": ("rattlesnake", "snake"),  # diamondback
    "n01756291": ("rattlesnake", "snake"),  # sidewinder
    "n01768244": ("trilobite", "fossil"),  # trilobite
    "n01770081": ("spider",),  # harvestman
    "n01774750": ("tarantula", "spider"),  # tarantula
    "n01776313": ("tick", "bug"),  # tick
    "n01795545": ("grouse", "bird"),  # black grouse
    "n01797886": ("grouse", "bird"),  # ruffed grouse
    "n01806567": ("quail", "bird"),  # quail
    "n01819313": ("cockatoo", "parrot", "bird"),  # sulphur-crested cockatoo
    "n01843383": ("toucan", "bird"),  # toucan
    "n01871265": ("elephant",),  # tusker
    "n01917289": ("coral",),  # brain coral
    "n01924916": ("worm",),  # flatworm
    "n01930112": ("worm",),  # nematode
    "n01943899": ("conch", "shell"),  # conch
    "n01968897": ("nautilus", "shell"),  # chambered nautilus
    "n01985128": ("crayfish",),  # crayfish
    "n01986214": ("hermit crab", "crab"),  # hermit crab
    "n01990800": ("isopod", "bug"),  # isopod
    "n02002556": ("stork", "bird"),  # white stork
    "n02002724": ("stork", "bird"),  # black stork
    "n02006656": ("spoonbill", "bird"),  # spoonbill
    "n02007558": ("flamingo", "bird"),  # flamingo
    "n02013706": ("bird",),  # limpkin
    "n02018207": ("bird",),  # American coot
    "n02018795": ("bird",),  # bustard
    "n02025239": ("bird",),  # ruddy turnstone
    "n02027492": ("bird",),  # red-backed sandpiper
    "n02028035": ("bird",),  # redshank
    "n02033041": ("bird",),  # dowitcher
    "n02037110": ("bird",),  # oystercatcher
    "n02058221": ("albatross", "bird"),  # albatross
    "n02071294": ("killer whale", "whale"),  # killer whale
    "n02077923": ("sea lion", "seal"),  # sea lion
    "n02115641": ("dingo", "dog"),  # dingo
    "n02115913": ("wild dog", "dog"),  # dhole
    "n02116738": ("wild dog", "dog"),  # African hunting dog
    "n02117135": ("hyena",),  # hyena
    "n02125311": ("cougar", "mountain lion"),  # cougar
    "n02127052": ("lynx", "cat"),  # lynx
    "n02128757": ("snow leopard", "leopard"),  # snow leopard
    "n02165456": ("ladybug", "insect"),  # ladybug
    "n02226429": ("grasshopper", "insect"),  # grasshopper
    "n02231487": ("stick insect", "insect"),  # walking stick
    "n02233338": ("cockroach", "insect"),  # cockroach
    "n02236044": ("praying mantis", "insect"),  # mantis
    "n02256656": ("cicada", "insect"),  # cicada
    "n02268443": ("dragonfly", "insect"),  # dragonfly
    "n02268853": ("dragonfly", "insect"),  # damselfly
    "n02277742": ("butterfly", "insect"),  # ringlet
    "n02279972": ("butterfly", "insect"),  # monarch
    "n02326432": ("hare", "rabbit"),  # hare
    "n02342885": ("hamster",),  # hamster
    "n02346627": ("porcupine",),  # porcupine
    "n02361337": ("marmot",),  # marmot
    "n02363005": ("beaver",),  # beaver
    "n02364673": ("guinea pig",),  # guinea pig
    "n02395406": ("pig",),  # hog
    "n02396427": ("wild boar", "pig"),  # wild boar
    "n02398521": ("hippo", "hippopotamus"),  # hippopotamus
    "n02403003": ("cow", "ox"),  # ox
    "n02408429": ("water buffalo", "buffalo"),  # water buffalo
    "n02410509": ("bison", "buffalo"),  # bison
    "n02412080": ("sheep", "ram"),  # ram
    "n02415577": ("bighorn sheep", "sheep"),  # bighorn
    "n02417914": ("ibex", "goat"),  # ibex
    "n02422699": ("impala", "antelope"),  # impala
    "n02423022": ("gazelle", "antelope"),  # gazelle
    "n02443114": ("polecat", "ferret"),  # polecat
    "n02480495": ("orangutan", "ape"),  # orangutan
    "n02480855": ("gorilla", "ape"),  # gorilla
    "n02481823": ("chimpanzee", "ape"),  # chimpanzee
    "n02483362": ("gibbon", "ape"),  # gibbon
    "n02483708": ("gibbon", "ape"),  # siamang
    "n02486410": ("baboon", "monkey"),  # baboon
    "n02490219": ("marmoset", "monkey"),  # marmoset
    "n02497673": ("lemur",),  # Madagascar cat
    "n02500267": ("lemur",),  # indri
    "n02509815": ("red panda",),  # lesser panda
    "n02526121": ("eel", "fish"),  # eel
    "n02606052": ("fish",),  # rock beauty
    "n02607072": ("clownfish", "fish"),  # anemone fish
    "n02655020": ("pufferfish", "fish"),  # puffer
    "n02666196": ("abacus",),  # abacus
    "n02667093": ("abaya", "robe"),  # abaya
    "n02669723": ("graduation gown", "gown"),  # academic gown
    "n02676566": ("guitar", "acoustic guitar", "instrument"),  # acoustic guitar
    "n02690373": ("airplane", "plane"),  # airliner
    "n02692877": ("blimp", "airship"),  # airship
    "n02701002": ("ambulance",),  # ambulance
    "n02704792": ("vehicle", "boat"),  # amphibian
    "n02727426": ("beehive",),  # apiary
    "n02747177": ("trash can", "garbage can"),  # ashcan
    "n02749479": ("rifle", "gun"),  # assault rifle
    "n02786058": ("bandage",),  # Band Aid
    "n02788148": ("railing", "banister"),  # bannister
    "n02791270": ("barber shop", "shop"),  # barbershop
    "n02794156": ("barometer",),  # barometer
    "n02804414": ("bassinet", "crib"),  # bassinet
    "n02804610": ("bassoon", "instrument"),  # bassoon
    "n02807133": ("swimming cap", "cap"),  # bathing cap
    "n02817516": ("bearskin", "hat"),  # bearskin
    "n02823750": ("beer", "glass"),  # beer glass
    "n02825657": ("bell tower",),  # bell cote
    "n02835271": ("bike", "bicycle"),  # bicycle-built-for-two
    "n02859443": ("boathouse",),  # boathouse
    "n02860847": ("bobsled", "sled"),  # bobsled
    "n02865351": ("bolo tie", "tie"),  # bolo tie
    "n02870880": ("bookcase", "bookshelf"),  # bookcase
    "n02877765": ("bottle cap", "cap"),  # bottlecap
    "n02892201": ("plaque",),  # brass
    "n02894605": ("pier", "breakwater"),  # breakwater
    "n02895154": ("armor",),  # breastplate
    "n02910353": ("buckle", "belt"),  # buckle
    "n02916936": ("bulletproof vest", "vest"),  # bulletproof vest
    "n02917067": ("train",),  # bullet train
    "n02930766": ("taxi", "cab", "car"),  # cab
    "n02939185": ("cauldron", "pot"),  # caldron
    "n02951585": ("can opener",),  # can opener
    "n02963159": ("sweater", "cardigan"),  # cardigan
    "n02965783": ("mirror", "car"),  # car mirror
    "n02966687": ("toolbox", "tool"),  # carpenter's kit
    "n02971356": ("carton", "box"),  # carton
    "n02974003": ("wheel", "tire"),  # car wheel
    "n02979186": ("cassette player",),  # cassette player
    "n02981792": ("catamaran", "sailboat", "boat"),  # catamaran
    "n02988304": ("cd player", "stereo"),  # CD player
    "n02992529": ("phone", "cellphone"),  # cellular telephone
    "n03000247": ("chain mail", "armor"),  # chain mail
    "n03016953": ("dresser",),  # chiffonier
    "n03017168": ("wind chime", "bell"),  # chime
    "n03032252": ("theater", "cinema"),  # cinema
    "n03041632": ("knife", "cleaver"),  # cleaver
    "n03042490": ("cliff dwelling", "ruins"),  # cliff dwelling
    "n03047690": ("clog", "shoe"),  # clog
    "n03063599": ("mug", "cup"),  # coffee mug
    "n03063689": ("coffee pot", "pot"),  # coffeepot
    "n03085013": ("keyboard", "computer"),  # computer keyboard
    "n03100240": ("car", "convertible"),  # convertible
    "n03109150": ("corkscrew",),  # corkscrew
    "n03110669": ("trumpet", "instrument"),  # cornet
    "n03124043": ("cowboy boot", "boot"),  # cowboy boot
    "n03127747": ("helmet",),  # crash helmet
    "n03133878": ("slow cooker", "pot"),  # Crock Pot
    "n03134739": ("ball", "croquet"),  # croquet ball
    "n03179701": ("desk",),  # desk
    "n03180011": ("computer", "desktop computer"),  # desktop computer
    "n03187595": ("telephone", "phone"),  # dial telephone
    "n03201208": ("table", "dining table"),  # dining table
    "n03207743": ("rag", "cloth"),  # dishrag
    "n03208938": ("brake", "wheel"),  # disk brake
    "n03218198": ("dog sled", "sled", "dog"),  # dogsled
    "n03223299": ("doormat", "mat"),  # doormat
    "n03259280": ("pot",),  # Dutch oven
    "n03271574": ("fan",),  # electric fan
    "n03272010": ("guitar", "electric guitar", "instrument"),  # electric guitar
    "n03272562": ("train", "locomotive"),  # electric locomotive
    "n03290653": ("entertainment center", "television", "tv"),  # entertainment center
    "n03297495": ("espresso machine", "coffee maker", "coffee"),  # espresso maker
    "n03337140": ("file cabinet", "cabinet"),  # file
    "n03345487": ("fire truck", "truck"),  # fire engine
    "n03347037": ("fireplace",),  # fire screen
    "n03355925": ("flagpole", "flag"),  # flagpole
    "n03393912": ("train", "freight car"),  # freight car
    "n03400231": ("frying pan", "pan"),  # frying pan
    "n03404251": ("fur coat", "coat"),  # fur coat
    "n03424325": ("gas mask", "mask"),  # gasmask
    "n03443371": ("goblet", "glass"),  # goblet
    "n03447721": ("gong", "instrument"),  # gong
    "n03450230": ("gown", "dress"),  # gown
    "n03452741": ("piano", "grand piano", "instrument"),  # grand piano
    "n03459775": ("grille", "car"),  # grille
    "n03461385": ("grocery store", "store"),  # grocery store
    "n03467068": ("guillotine",),  # guillotine
    "n03476684": ("hair clip",),  # hair slide
    "n03476991": ("hair spray",),  # hair spray
    "n03482405": ("basket", "hamper"),  # hamper
    "n03483316": ("hair dryer", "blow dryer"),  # hand blower
    "n03485407": ("pda", "computer"),  # hand-held computer
    "n03492542": ("hard drive",),  # hard disc
    "n03496892": ("harvester", "tractor"),  # harvester
    "n03498962": ("hatchet", "axe"),  # hatchet
    "n03527444": ("holster",),  # holster
    "n03529860": ("home theater", "television", "living room"),  # home theater
    "n03534580": ("dress", "skirt"),  # hoopskirt
    "n03538406": ("horse", "cart", "carriage"),  # horse cart
    "n03544143": ("hourglass",),  # hourglass
    "n03590841": ("pumpkin", "jack o lantern"),  # jack-o'-lantern
    "n03594734": ("jeans",),  # jean
    "n03595614": ("jersey", "shirt"),  # jersey
    "n03598930": ("puzzle", "jigsaw puzzle"),  # jigsaw puzzle
    "n03602883": ("joystick",),  # joystick
    "n03637318": ("lamp", "lampshade"),  # lampshade
    "n03642806": ("laptop", "computer"),  # laptop
    "n03657121": ("lens cap", "camera"),  # lens cap
    "n03658185": ("letter opener",),  # letter opener
    "n03670208": ("limousine", "limo", "car"),  # limousine
    "n03673027": ("cruise ship", "ship"),  # liner
    "n03690938": ("lotion", "bottle"),  # lotion
    "n03691459": ("speaker",),  # loudspeaker
    "n03697007": ("sawmill", "factory"),  # lumbermill
    "n03710637": ("leotard",),  # maillot
    "n03710721": ("swimsuit", "bathing suit"),  # maillot
    "n03729826": ("matchstick", "match"),  # matchstick
    "n03733131": ("maypole", "pole"),  # maypole
    "n03733805": ("measuring cup", "cup"),  # measuring cup
    "n03742115": ("medicine cabinet", "cabinet"),  # medicine chest
    "n03743016": ("monument", "stone"),  # megalith
    "n03763968": ("military uniform", "uniform"),  # military uniform
    "n03764736": ("milk can", "can"),  # milk can
    "n03769881": ("bus", "van"),  # minibus
    "n03770439": ("skirt", "miniskirt"),  # miniskirt
    "n03770679": ("minivan", "van", "car"),  # minivan
    "n03773504": ("missile", "rocket"),  # missile
    "n03775071": ("mitten", "glove"),  # mitten
    "n03775546": ("bowl", "mixing bowl"),  # mixing bowl
    "n03776460": ("trailer", "mobile home"),  # mobile home
    "n03777754": ("modem",),  # modem
    "n03781244": ("monastery", "building"),  # monastery
    "n03782006": ("monitor", "computer", "screen"),  # monitor
    "n03785016": ("motorcycle", "scooter", "moped"),  # moped
    "n03786901": ("mortar and pestle", "bowl"),  # mortar
    "n03787032": ("graduation cap", "cap"),  # mortarboard
    "n03791053": ("scooter", "motorcycle"),  # motor scooter
    "n03792782": ("bike", "bicycle", "mountain bike"),  # mountain bike
    "n03793489": ("computer mouse", "mouse"),  # mouse
    "n03794056": ("mousetrap", "trap"),  # mousetrap
    "n03796401": ("moving truck", "truck"),  # moving van
    "n03803284": ("muzzle", "dog"),  # muzzle
    "n03814639": ("neck brace",),  # neck brace
    "n03825788": ("baby bottle", "bottle"),  # nipple
    "n03832673": ("laptop", "computer"),  # notebook
    "n03837869": ("obelisk", "monument"),  # obelisk
    "n03840681": ("ocarina", "instrument"),  # ocarina
    "n03841143": ("speedometer", "dashboard"),  # odometer
    "n03843555": ("oil filter",),  # oil filter
    "n03857828": ("oscilloscope", "machine"),  # oscilloscope
    "n03868242": ("cart", "ox"),  # oxcart
    "n03868863": ("oxygen mask", "mask"),  # oxygen mask
    "n03871628": ("packet", "package"),  # packet
    "n03874293": ("paddle wheel", "boat"),  # paddlewheel
    "n03874599": ("padlock", "lock"),  # padlock
    "n03877472": ("pajamas",),  # pajama
    "n03884397": ("pan flute", "instrument"),  # panpipe
    "n03891251": ("bench", "park bench"),  # park bench
    "n03895866": ("train", "train car"),  # passenger car
    "n03902125": ("pay phone", "phone"),  # pay-phone
    "n03908618": ("pencil case",),  # pencil box
    "n03916031": ("perfume", "bottle"),  # perfume
    "n03924679": ("copy machine", "machine"),  # photocopier
    "n03929660": ("guitar pick",),  # pick
    "n03930313": ("fence", "picket fence"),  # picket fence
    "n03930630": ("pickup truck", "truck"),  # pickup
    "n03937543": ("pill bottle", "bottle"),  # pill bottle
    "n03942813": ("ping pong ball", "ball"),  # ping-pong ball
    "n03947888": ("pirate ship", "ship"),  # pirate
    "n03950228": ("pitcher", "jug"),  # pitcher
    "n03954731": ("hand plane", "tool"),  # plane
    "n03956157": ("planetarium", "building"),  # planetarium
    "n03958227": ("plastic bag", "bag"),  # plastic bag
    "n03961711": ("dish rack", "rack"),  # plate rack
    "n03970156": ("plunger",),  # plunger
    "n03977966": ("police van", "police", "van"),  # police van
    "n03991062": ("flower pot", "plant", "pot"),  # pot
    "n03992509": ("pottery wheel", "pottery"),  # potter's wheel
    "n03995372": ("drill", "power drill"),  # power drill
    "n04008634": ("missile", "rocket"),  # projectile
    "n04019541": ("puck", "hockey"),  # puck
    "n04023962": ("punching bag",),  # punching bag
    "n04033901": ("quill", "pen"),  # quill
    "n04033995": ("quilt", "blanket"),  # quilt
    "n04037443": ("race car", "car"),  # racer
    "n04039381": ("tennis racket", "racket"),  # racket
    "n04044716": ("radio telescope", "satellite dish"),  # radio telescope
    "n04049303": ("barrel",),  # rain barrel
    "n04065272": ("rv", "camper"),  # recreational vehicle
    "n04067472": ("fishing reel", "reel"),  # reel
    "n04070727": ("refrigerator", "fridge"),  # refrigerator
    "n04074963": ("remote control", "remote"),  # remote control
    "n04081281": ("restaurant",),  # restaurant
    "n04086273": ("revolver", "gun"),  # revolver
    "n04090263": ("rifle", "gun"),  # rifle
    "n04116512": ("eraser",),  # rubber eraser
    "n04118776": ("ruler",),  # rule
    "n04120489": ("sneaker", "shoe"),  # running shoe
    "n04127249": ("safety pin", "pin"),  # safety pin
    "n04131690": ("salt shaker",),  # saltshaker
    "n04136333": ("sarong", "skirt"),  # sarong
    "n04141076": ("saxophone", "instrument"),  # sax
    "n04141327": ("scabbard", "sword"),  # scabbard
    "n04147183": ("sailing ship", "ship", "boat"),  # schooner
    "n04152593": ("screen", "monitor"),  # screen
    "n04153751": ("screw",),  # screw
    "n04201297": ("shoji", "screen"),  # shoji
    "n04204238": ("shopping basket", "basket"),  # shopping basket
    "n04209133": ("shower cap", "cap"),  # shower cap
    "n04209239": ("shower curtain", "shower"),  # shower curtain
    "n04238763": ("slide rule", "ruler"),  # slide rule
    "n04243546": ("slot machine",),  # slot
    "n04252225": ("snowplow", "truck", "snow"),  # snowplow
    "n04254680": ("soccer ball", "ball", "soccer"),  # soccer ball
    "n04258138": ("solar dish",),  # solar dish
    "n04263257": ("soup bowl", "bowl", "soup"),  # soup bowl
    "n04264628": ("keyboard",),  # space bar
    "n04265275": ("heater",),  # space heater
    "n04266014": ("space shuttle", "rocket"),  # space shuttle
    "n04275548": ("spider web", "web"),  # spider web
    "n04277352": ("spinning wheel", "spindle"),  # spindle
    "n04310018": ("train", "steam engine", "locomotive"),  # steam locomotive
    "n04325704": ("shawl", "scarf"),  # stole
    "n04326547": ("stone wall", "wall"),  # stone wall
    "n04328186": ("stopwatch", "watch"),  # stopwatch
    "n04335435": ("trolley", "streetcar", "tram"),  # streetcar
    "n04344873": ("couch", "sofa"),  # studio couch
    "n04346328": ("temple", "stupa"),  # stupa
    "n04355338": ("sundial",),  # sundial
    "n04355933": ("sunglasses",),  # sunglass
    "n04357314": ("sunscreen", "lotion"),  # sunscreen
    "n04372370": ("light switch", "switch"),  # switch
    "n04380533": ("lamp", "table lamp"),  # table lamp
    "n04392985": ("cassette player",),  # tape player
    "n04398044": ("teapot", "tea"),  # teapot
    "n04399382": ("teddy bear",),  # teddy
    "n04404412": ("television", "tv"),  # television
    "n04417672": ("thatched roof", "roof"),  # thatch
    "n04418357": ("curtain", "stage"),  # theater curtain
    "n04423845": ("thimble",),  # thimble
    "n04428191": ("threshing machine", "machine"),  # thresher
    "n04435653": ("roof", "tile roof"),  # tile roof
    "n04443257": ("tobacco shop", "store"),  # tobacco shop
    "n04447861": ("toilet", "toilet seat"),  # toilet seat
    "n04462240": ("toy store", "store"),  # toyshop
    "n04467665": ("semi truck", "truck"),  # trailer truck
    "n04479046": ("coat", "trench coat"),  # trench coat
    "n04483307": ("sailboat", "boat"),  # trimaran
    "n04486054": ("arch", "monument"),  # triumphal arch
    "n04501370": ("turnstile", "gate"),  # turnstile
    "n04505470": ("typewriter", "keyboard"),  # typewriter keyboard
    "n04515003": ("piano", "upright piano", "instrument"),  # upright
    "n04517823": ("vacuum cleaner", "vacuum"),  # vacuum
    "n04523525": ("vaulted ceiling", "ceiling"),  # vault
    "n04525038": ("velvet", "fabric"),  # velvet
    "n04532106": ("vestment", "robe"),  # vestment
    "n04532670": ("viaduct", "bridge"),  # viaduct
    "n04542943": ("waffle iron", "waffle"),  # waffle iron
    "n04552348": ("fighter jet", "jet", "airplane"),  # warplane
    "n04553703": ("sink",),  # washbasin
    "n04554684": ("washing machine", "washer"),  # washer
    "n04560804": ("water jug", "jug"),  # water jug
    "n04579145": ("jug",),  # whiskey jug
    "n04589890": ("screen", "window"),  # window screen
    "n04590129": ("window shade", "window"),  # window shade
    "n04591157": ("tie", "necktie"),  # Windsor tie
    "n04591713": ("wine bottle", "bottle", "wine"),  # wine bottle
    "n04592741": ("wing", "airplane"),  # wing
    "n04596742": ("wok", "pan"),  # wok
    "n04597913": ("spoon", "wooden spoon"),  # wooden spoon
    "n04599235": ("yarn", "wool"),  # wool
    "n04606251": ("shipwreck", "ship"),  # wreck
    "n04612504": ("sailboat", "boat"),  # yawl
    "n04613696": ("yurt", "tent"),  # yurt
    "n06359193": ("website", "screen"),  # web site
    "n06785654": ("crossword puzzle", "newspaper"),  # crossword puzzle
    "n06794110": ("street sign", "sign"),  # street sign
    "n07248320": ("book", "book cover"),  # book jacket
    "n07579787": ("plate", "food"),  # plate
    "n07583066": ("guacamole", "dip"),  # guacamole
    "n07590611": ("stew", "hot pot"),  # hot pot
    "n07613480": ("dessert", "trifle"),  # trifle
    "n07615774": ("popsicle",),  # ice lolly
    "n07684084": ("bread", "baguette"),  # French loaf
    "n07697313": ("burger", "cheeseburger", "hamburger"),  # cheeseburger
    "n07697537": ("hot dog",),  # hotdog
    "n07711569": ("mashed potato", "potato"),  # mashed potato
    "n07720875": ("pepper", "bell pepper", "vegetable"),  # bell pepper
    "n07734744": ("mushroom",),  # mushroom
    "n07742313": ("apple", "fruit"),  # Granny Smith
    "n07753113": ("fig", "fruit"),  # fig
    "n07754684": ("jackfruit", "fruit"),  # jackfruit
    "n07768694": ("pomegranate", "fruit"),  # pomegranate
    "n07831146": ("pasta",),  # carbonara
    "n07836838": ("chocolate sauce", "sauce"),  # chocolate sauce
    "n07871810": ("meatloaf",),  # meat loaf
    "n07875152": ("pot pie", "pie"),  # potpie
    "n07892512": ("wine", "red wine"),  # red wine
    "n07920052": ("coffee", "cup"),  # espresso
    "n07932039": ("drink", "eggnog"),  # eggnog
    "n09256479": ("coral reef", "coral"),  # coral reef
    "n09332890": ("lake",),  # lakeside
    "n09399592": ("cliff", "coast"),  # promontory
    "n09421951": ("beach", "sand"),  # sandbar
    "n09428293": ("beach", "shore"),  # seashore
    "n09472597": ("volcano", "mountain"),  # volcano
    "n09835506": ("baseball player", "player"),  # ballplayer
    "n10148035": ("man", "groom"),  # groom
    "n10565667": ("diver", "scuba diver"),  # scuba diver
    "n11879895": ("field", "flower"),  # rapeseed
    "n12057211": ("flower", "orchid"),  # yellow lady's slipper
    "n12620546": ("rose hip", "berry"),  # hip
    "n12768682": ("chestnut", "nut"),  # buckeye
    "n12985857": ("fungus", "mushroom"),  # coral fungus
    "n12998815": ("mushroom",),  # agaric
    "n13037406": ("mushroom",),  # gyromitra
    "n13040303": ("mushroom",),  # stinkhorn
    "n13044778": ("fungus", "mushroom"),  # earthstar
    "n13052670": ("mushroom",),  # hen-of-the-woods
    "n13054560": ("mushroom",),  # bolete
    "n13133613": ("corn",),  # ear
}


def read_synset_ids(timm_wheel: Path, synsets: Path | None) -> list[str]:
    """The 1,000 WordNet ids in classifier order, from a synsets file or else out of a timm wheel."""
    if synsets is not None:
        text = synsets.read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(timm_wheel) as wheel:
            text = wheel.read(SYNSETS_IN_WHEEL).decode("utf-8")
    wnids = text.split()
    if len(wnids) != 1000 or len(set(wnids)) != 1000 or not all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids):
        raise SystemExit(f"expected 1,000 distinct WordNet noun ids, got {len(wnids)}")
    return wnids


def open_wordnet(wordnet_dir: Path, nltk_data: Path) -> WordNetCorpusReader:
    """nltk's WordNet reader over Debian's files, copied to nltk_data/corpora/wordnet beside a lexnames file.

    Copies, not symlinks: nltk refuses corpus files whose real path leaves its data folder.
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    corpus = nltk_data / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for source in wordnet_dir.iterdir():
        if source.is_file():
            shutil.copyfile(source, corpus / source.name)
    lexnames = (f"{number:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for number, name in enumerate(LEXNAMES))
    (corpus / "lexnames").write_text("".join(lexnames), encoding="utf-8")
    nltk.data.path.insert(0, str(nltk_data))
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed here
        warnings.simplefilter("ignore")
        wordnet = WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
    if wordnet.get_version() != "3.0":
        raise SystemExit(f"expected WordNet 3.0 in {wordnet_dir}, found {wordnet.get_version()}")
    return wordnet


def tokens(text: str) -> list[str]:
    """Lower-case words of a caption or a WordNet lemma ('Granny_Smith' -> ['granny', 'smith'])."""
    return re.findall(r"[a-z]+", text.lower().replace("_", " "))


def phrase_of(lemma: str) -> str:
    """A WordNet lemma as a caption phrase: 'hot_dog' -> 'hot dog'."""
    return " ".join(tokens(lemma))


def read_captions(paths: Iterable[Path]) -> Iterator[str]:
    """The captions of `image<TAB>caption` files, skipping a header line `image<TAB>caption`."""
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                image, _, caption = line.rstrip("\n").partition("\t")
                if caption and image != "image":
                    yield caption


def count_phrases(captions: Iterable[str], phrases: set[str]) -> Counter[str]:
    """How often each phrase (space-joined tokens) occurs in the captions."""
    longest = max(len(phrase.split()) for phrase in phrases)
    counts: Counter[str] = Counter()
    for caption in captions:
        words = tokens(caption)
        for size in range(1, longest + 1):
            for start in range(len(words) - size + 1):
                phrase = " ".join(words[start:start + size])
                if phrase in phrases:
                    counts[phrase] += 1
    return counts


def irregular_plurals(wordnet: WordNetCorpusReader) -> dict[str, list[str]]:
    """Singular noun -> its irregular plurals, from WordNet's noun.exc lines `plural singular` ('mouse' -> ['mice'])."""
    table: dict[str, list[str]] = {}
    with wordnet.open("noun.exc") as lines:
        for line in lines:
            inflected, *bases = line.split()
            for base in bases:
                table.setdefault(base.replace("_", " "), []).append(inflected.replace("_", " "))
    return table


def plurals(phrase: str, irregular: dict[str, list[str]]) -> list[str]:
    """Plural forms of a phrase (its last word): WordNet's exceptions, else the regular English rules."""
    *head, last = phrase.split()
    if last in irregular:
        forms = irregular[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        forms = [last + "es"]
    elif re.search(r"[^aeiou]y$", last):
        forms = [last[:-1] + "ies"]
    else:
        forms = [last + "s"]
    return [" ".join([*head, form]) for form in forms]


def walk(synset: Synset, max_level: int | None = MAX_CLIMB, stop: frozenset[str] = GENERIC) -> list[tuple[int, Synset]]:
    """(level, synset) for the synset and its hypernyms (instance hypernyms too), nearest first.

    Stops below synsets named in `stop` and after `max_level` levels (None: no limit).
    """
    found, seen, level, frontier = [], set(), 0, [synset]
    while frontier and (max_level is None or level <= max_level):
        following = []
        for node in frontier:
            if node in seen or node.name() in stop:
                continue
            seen.add(node)
            found.append((level, node))
            following.extend(sorted(node.hypernyms() + node.instance_hypernyms(), key=lambda parent: parent.name()))
        frontier, level = following, level + 1
    return found


def ancestor_names(synset: Synset) -> set[str]:
    """Names of the synset and of every synset above it."""
    return {node.name() for _, node in walk(synset, max_level=None, stop=frozenset())}


def is_person(synset: Synset) -> bool:
    """Whether the class is itself a person (a scuba diver, a groom)."""
    return "person.n.01" in ancestor_names(synset)


class WordChooser:
    """The heuristic of the module docstring: WordNet lemmas ranked by caption counts."""

    def __init__(self, wordnet: WordNetCorpusReader, captions: Iterable[str], synsets: list[Synset]):
        self.wordnet = wordnet
        self.irregular = irregular_plurals(wordnet)
        phrases = {phrase_of(lemma) for synset in synsets for _, node in walk(synset) for lemma in node.lemma_names()}
        phrases |= {form for phrase in phrases for form in plurals(phrase, self.irregular)}
        self.counts = count_phrases(captions, phrases)

    def frequency(self, phrase: str) -> int:
        """How often the captions use a phrase, singular or plural."""
        return self.counts[phrase] + sum(self.counts[form] for form in plurals(phrase, self.irregular))

    def sense_rank(self, phrase: str, synset: Synset) -> int:
        """Where the synset comes among the phrase's noun senses, most common first (a large number if absent)."""
        senses = self.wordnet.synsets(phrase.replace(" ", "_"), pos="n")
        return senses.index(synset) if synset in senses else len(senses) + MAX_SENSE_RANK

    def main_word(self, synset: Synset) -> str:
        """The basic-level category's word, else the most specific frequent lemma, else the class's own name."""
        names = ancestor_names(synset)
        for category, word in BASIC_LEVEL.items():
            if category in names:
                return word
        for level, node in walk(synset):
            for lemma in node.lemma_names():
                phrase = phrase_of(lemma)
                if self.frequency(phrase) >= MIN_COUNT and (level == 0 or self.sense_rank(phrase, node) < MAX_SENSE_RANK):
                    return phrase
        return phrase_of(synset.lemma_names()[0])

    def words(self, synset: Synset) -> list[str]:
        """The main word, then the BROAD word of the nearest broad category above the class if it differs."""
        main = self.main_word(synset)
        above = (node.name() for _, node in walk(synset, max_level=None, stop=frozenset()))
        broad = next((BROAD[name] for name in above if name in BROAD), None)
        return [main] if broad in (None, main) else [main, broad]


def check_words(entry: dict) -> None:
    """A class needs 1-MAX_WORDS distinct lower-case words, each of 1-3 tokens."""
    words = entry["words"]
    if not 1 <= len(words) <= MAX_WORDS or len(set(words)) != len(words):
        raise SystemExit(f"class {entry['index']} {entry['name']}: needs 1-{MAX_WORDS} distinct words, has {words}")
    for word in words:
        if word != " ".join(tokens(word)) or len(word.split()) > 3:
            raise SystemExit(f"class {entry['index']} {entry['name']}: {word!r} is not 1-3 lower-case words")


def build_table(wnids: list[str], wordnet: WordNetCorpusReader, captions: list[Path]) -> dict:
    """The table as written to JSON: format_version, source and one entry per class in classifier order."""
    stale = sorted(set(OVERRIDES) - set(wnids))
    if stale:
        raise SystemExit(f"OVERRIDES names classes that are not ImageNet-1k classes: {stale}")
    synsets = [wordnet.synset_from_pos_and_offset("n", int(wnid[1:])) for wnid in wnids]
    chooser = WordChooser(wordnet, read_captions(captions), synsets)
    classes = []
    for index, (wnid, synset) in enumerate(zip(wnids, synsets)):
        words = list(OVERRIDES[wnid]) if wnid in OVERRIDES else chooser.words(synset)
        entry = {"index": index, "wnid": wnid, "name": synset.lemma_names()[0].replace("_", " "), "words": words}
        if is_person(synset):
            entry["person"] = True
        check_words(entry)
        classes.append(entry)
    source = (
        "Made by scripts/build_concept_table.py: classes in the order of timm's imagenet_synsets.txt; words from "
        "WordNet 3.0 lemmas and hypernyms, picked by how often Flickr30k, COCO and Flickr8k captions use them; "
        f"{len(OVERRIDES)} classes set by hand (OVERRIDES)"
    )
    return {"format_version": FORMAT_VERSION, "source": source, "classes": classes}


def write_table(table: dict, path: Path) -> None:
    """Pretty-printed JSON with one class per line, so that a change to one class is a one-line diff."""
    fields = [(key, value) for key, value in table.items() if key != "classes"]
    header = "".join(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n" for key, value in fields)
    rows = ",\n".join("    " + json.dumps(entry, ensure_ascii=False) for entry in table["classes"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{\n" + header + '  "classes": [\n' + rows + "\n  ]\n}\n", encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: where the class order, WordNet and captions come from, where the table goes."""
    parser = argparse.ArgumentParser(description="Build the ImageNet class -> caption words table.")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--timm-wheel", type=Path, default=DEFAULT_TIMM_WHEEL,
                       help=f"a timm wheel holding {SYNSETS_IN_WHEEL} (pip download --no-deps timm)")
    order.add_argument("--synsets", type=Path, help="an imagenet_synsets.txt to read instead of a wheel")
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET, help="WordNet 3.0 database files (Debian: wordnet-base)")
    parser.add_argument("--captions", type=Path, nargs="+", default=DEFAULT_CAPTIONS, help="image<TAB>caption files")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the table and write it; print how many classes the heuristic and OVERRIDES decided."""
    args = parse_args(argv)
    wnids = read_synset_ids(args.timm_wheel, args.synsets)
    with tempfile.TemporaryDirectory(prefix="nltk_data_") as nltk_data:
        wordnet = open_wordnet(args.wordnet, Path(nltk_data))
        table = build_table(wnids, wordnet, args.captions)
    write_table(table, args.output)
    overridden = sum(entry["wnid"] in OVERRIDES for entry in table["classes"])
    print(f"wrote {args.output}: {len(wnids)} classes, {len(wnids) - overridden} from the heuristic, {overridden} from OVERRIDES")
    return 0


if __name__ == "__main__":
    sys.exit(main())
