// Loads an ontology with the OWL API bundled in owlready2's HermiT.jar, and reports what an
// OWL tool (Protégé uses the same library) sees: triples it could not parse, OWL 2 DL profile
// violations, and, with HermiT, consistency and unsatisfiable classes. One "key: value" line each.
//
// Run as a single-file program: java -cp HermiT.jar OwlCheck.java ONTOLOGY.ttl

import java.io.File;
import java.util.Set;

import org.semanticweb.HermiT.Reasoner;
import org.semanticweb.owlapi.apibinding.OWLManager;
import org.semanticweb.owlapi.io.OWLOntologyDocumentSource;
import org.semanticweb.owlapi.io.FileDocumentSource;
import org.semanticweb.owlapi.io.RDFOntologyFormat;
import org.semanticweb.owlapi.io.RDFParserMetaData;
import org.semanticweb.owlapi.io.RDFTriple;
import org.semanticweb.owlapi.model.OWLClass;
import org.semanticweb.owlapi.model.OWLOntology;
import org.semanticweb.owlapi.model.OWLOntologyFormat;
import org.semanticweb.owlapi.model.OWLOntologyManager;
import org.semanticweb.owlapi.profiles.OWL2DLProfile;
import org.semanticweb.owlapi.profiles.OWLProfileReport;
import org.semanticweb.owlapi.profiles.OWLProfileViolation;
import org.semanticweb.owlapi.reasoner.OWLReasoner;

public class OwlCheck {
    public static void main(String[] args) throws Exception {
        OWLOntologyManager manager = OWLManager.createOWLOntologyManager();
        OWLOntology ontology = manager.loadOntologyFromOntologyDocument(new File(args[0]));
        System.out.println("axioms: " + ontology.getAxiomCount());
        OWLOntologyFormat format = manager.getOntologyFormat(ontology);
        int unparsed = 0;
        if (format instanceof RDFOntologyFormat) {
            Object meta = ((RDFOntologyFormat) format).getOntologyLoaderMetaData();
            if (meta instanceof RDFParserMetaData) {
                Set<RDFTriple> triples = ((RDFParserMetaData) meta).getUnparsedTriples();
                unparsed = triples.size();
                for (RDFTriple t : triples) {
                    System.out.println("unparsed-triple: " + t);
                }
            }
        }
        System.out.println("unparsed: " + unparsed);
        OWLProfileReport report = new OWL2DLProfile().checkOntology(ontology);
        for (OWLProfileViolation v : report.getViolations()) {
            System.out.println("dl-violation: " + v.toString().replace('\n', ' '));
        }
        System.out.println("dl-violations: " + report.getViolations().size());
        OWLReasoner reasoner = new Reasoner.ReasonerFactory().createReasoner(ontology);
        boolean consistent = reasoner.isConsistent();
        System.out.println("consistent: " + consistent);
        if (consistent) {
            Set<OWLClass> unsatisfiable = reasoner.getUnsatisfiableClasses().getEntitiesMinusBottom();
            for (OWLClass c : unsatisfiable) {
                System.out.println("unsatisfiable-class: " + c.getIRI());
            }
            System.out.println("unsatisfiable: " + unsatisfiable.size());
        }
        reasoner.dispose();
    }
}
